"""Start and stop real node processes (`twistd -n dfs ...`) and run `dfs` against them.

Used by `make demo`, the benchmark and the integration tests: one way to run a
node from a program, the same way an operator does from a shell.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


_handed_out: set[int] = set()


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now and that no outgoing connection will take.

    A port the kernel hands out for ``bind(0)`` comes from the range it also uses for
    the source ports of outgoing connections, so between choosing it and a node
    listening on it, another node's dial could take it ("Address already in use").
    Ports below that range are never chosen as source ports; each is handed out once
    per process.
    """
    low = _first_ephemeral_port()
    first = 10000 if low > 11000 else 1024
    if low - first < 1000:  # the range starts too low to leave room: any free port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(1000):
        port = random.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {first}-{low - 1} on 127.0.0.1")


def _command(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


class NodeFailed(Exception):
    """A node process exited or did not become ready in time."""


class NodeProcess:
    """One `twistd -n dfs` process, owned by its creator and stopped by PID.

    ``prefix`` goes before the node's command and every `dfs` run against it, e.g.
    ``["ip", "netns", "exec", NAME]`` for a node in a network namespace (the command
    must exec the node in place, so that the PID is the node's).
    """

    def __init__(
        self,
        port: int,
        data_dir: Path,
        peers: Sequence[int | str] = (),
        org: str | None = None,
        extra: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self.peers = [str(p) for p in peers]
        self.org = org
        self.extra = list(extra)
        self.prefix = list(prefix)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [
            *self.prefix,
            *_command("twistd", "twisted.scripts.twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "dfs",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.peers:
            argv += ["--peers", ",".join(self.peers)]
        if self.org:
            argv += ["--org", self.org]
        return argv + self.extra

    def start(self) -> NodeProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "api.url").unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            raise NodeFailed(
                f"node {self.port} exited with {self.process.returncode}: "
                f"{err.strip()}\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Wait until the node wrote api.url (it does so once it listens)."""
        deadline = time.monotonic() + timeout
        url_file = self.data_dir / "api.url"
        while time.monotonic() < deadline:
            self._check_alive()
            if url_file.exists():
                return url_file.read_text().strip()
            time.sleep(0.05)
        raise NodeFailed(f"node {self.port} not ready after {timeout}s\n{self.log_tail()}")

    def status(self) -> dict[str, Any]:
        if self.prefix:
            # The API listens on 127.0.0.1 where the node runs (maybe another
            # network namespace): ask it through `dfs`, run there.
            answer: dict[str, Any] = json.loads(self.dfs("status", "--json").stdout)
            return answer
        url = (self.data_dir / "api.url").read_text().strip()
        token = (self.data_dir / "private" / "api_token").read_text().strip()
        request = urllib.request.Request(
            url + "v1/status", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result

    def wait_peers(self, count: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``count`` peers are connected; return the status."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            status = self.status()
            if sum(p["state"] == "connected" for p in status["peers"]) >= count:
                return status
            time.sleep(0.05)
        raise NodeFailed(f"node {self.port}: fewer than {count} peers connected: {status}")

    def dfs(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the real `dfs` command against this node."""
        result = subprocess.run(
            [
                *self.prefix,
                *_command("dfs", "dfs_twisted.cli"),
                "--node",
                str(self.data_dir),
                *args,
            ],
            input=input,
            capture_output=True,
            timeout=600,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"dfs {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def peak_rss(self) -> int:
        """Peak resident memory of the node process, in bytes (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop this process (by its PID only) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            if self.process.stderr:
                self.process.stderr.close()


def start_network(
    root: Path, topology: Sequence[tuple[int, Sequence[int]]], extra: Sequence[str] = ()
) -> list[NodeProcess]:
    """Start nodes given as (port, ports it dials) under ``root``, each with the
    options ``extra``; wait until all are linked."""
    nodes = [NodeProcess(port, root / str(port), peers, extra=extra) for port, peers in topology]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        links = {node.port: 0 for node in nodes}
        for port, peers in topology:
            for peer in peers:
                links[port] += 1
                links[peer] += 1
        for node in nodes:
            node.wait_peers(links[node.port])
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes
