"""Three Linux network namespaces joined pairwise by veth links, for multi-host tests.

    lab = NetnsLab()                      # or NetnsLab.unavailable() -> skip reason
    lab.address("a", "b")                 # a's address on the a-b link
    lab.exec_prefix("a")                  # ["ip", "netns", "exec", NAME]: run a command in a
    lab.cut("a", "b"); lab.heal("a", "b") # partition and reconnect one link
    lab.close()                           # delete the namespaces (also at exit)

Each link is its own /30 in 10.0.0.0/8, picked from the PID so that parallel runs
use different addresses (the namespaces isolate them anyway). The veth ends are
created directly inside their namespaces: nothing of the root namespace (its
interfaces, addresses or routes) is touched, and nothing routes between links, so
a cut link is a real partition: the two ends can no longer reach each other.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from typing import ClassVar

HOSTS = ("a", "b", "c")
LINKS = tuple(itertools.combinations(HOSTS, 2))  # (a, b), (a, c), (b, c)
NETWORK = ipaddress.IPv4Network("10.0.0.0/8")
RUN_BLOCK = 16  # addresses per run: one /30 per link (3 * 4 = 12), rounded up


class NetnsError(Exception):
    """An `ip` command failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


def _link_name(here: str, there: str) -> str:
    return f"to-{there}"  # the end of the here-there link inside namespace ``here``


class NetnsLab:
    """Three namespaces a, b, c with a veth link between every pair."""

    _reason: ClassVar[str | None] = None
    _probed: ClassVar[bool] = False

    @classmethod
    def unavailable(cls) -> str | None:
        """Why namespaces cannot be used here (a skip reason), or None if they can."""
        if not cls._probed:
            cls._reason = cls._probe()
            cls._probed = True
        return cls._reason

    @staticmethod
    def _probe() -> str | None:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return "network namespaces need root (run the suite as root to include these tests)"
        if shutil.which("ip") is None:
            return "network namespaces need the `ip` command (iproute2), not found on PATH"
        name = f"dfs-{os.getpid()}-{secrets.token_hex(3)}-probe"
        try:
            _ip("netns", "add", name)
        except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
            return f"cannot create a network namespace: {e}"
        try:
            _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
            return f"cannot create a veth pair in a network namespace: {e}"
        finally:
            _ip("netns", "delete", name, check=False)
        return None

    def __init__(self) -> None:
        reason = self.unavailable()
        if reason is not None:
            raise NetnsError(reason)
        pid = os.getpid()
        tag = f"dfs-{pid}-{secrets.token_hex(3)}"
        self.names = {host: f"{tag}-{host}" for host in HOSTS}
        block = NETWORK.network_address + (pid % (NETWORK.num_addresses // RUN_BLOCK)) * RUN_BLOCK
        self.subnets = {
            link: ipaddress.IPv4Network(f"{block + 4 * i}/30") for i, link in enumerate(LINKS)
        }
        self._created: list[str] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        # The kernel's TCP settings are left alone: a node must notice a cut link
        # by itself (its PING timeout), as it would between real hosts.
        for host in HOSTS:
            name = self.names[host]
            _ip("netns", "add", name)
            self._created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        for x, y in LINKS:
            # Both ends are created inside their namespaces, never in the root one.
            _ip(
                "-n",
                self.names[x],
                "link",
                "add",
                _link_name(x, y),
                "type",
                "veth",
                "peer",
                "name",
                _link_name(y, x),
                "netns",
                self.names[y],
            )
            for here, there in ((x, y), (y, x)):
                prefix = self.subnets[(x, y)].prefixlen
                _ip(
                    "-n",
                    self.names[here],
                    "addr",
                    "add",
                    f"{self.address(here, there)}/{prefix}",
                    "dev",
                    _link_name(here, there),
                )
            self.heal(x, y)

    # -- addresses and commands

    def _link(self, x: str, y: str) -> tuple[str, str]:
        link = (x, y) if (x, y) in self.subnets else (y, x)
        if link not in self.subnets:
            raise ValueError(f"no link between {x!r} and {y!r}")
        return link

    def address(self, host: str, peer: str) -> str:
        """``host``'s address on its link to ``peer``."""
        link = self._link(host, peer)
        hosts = list(self.subnets[link].hosts())
        return str(hosts[link.index(host)])

    def exec_prefix(self, host: str) -> list[str]:
        """Prepend to a command to run it inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.names[host]]

    def run(self, host: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``host``'s namespace (for diagnostics and checks)."""
        return subprocess.run(
            [*self.exec_prefix(host), *argv], capture_output=True, text=True, timeout=60
        )

    # -- partitions

    def _set(self, x: str, y: str, state: str) -> None:
        for here, there in ((x, y), (y, x)):
            _ip("-n", self.names[here], "link", "set", _link_name(here, there), state)

    def cut(self, x: str, y: str) -> None:
        """Take the x-y link down at both ends: x and y can no longer reach each other."""
        self._link(x, y)
        self._set(x, y, "down")

    def heal(self, x: str, y: str) -> None:
        """Bring the x-y link up again at both ends."""
        self._link(x, y)
        self._set(x, y, "up")

    def link_up(self, x: str, y: str) -> bool:
        """Whether both ends of the x-y link are up with carrier."""
        self._link(x, y)
        for here, there in ((x, y), (y, x)):
            shown = _ip("-n", self.names[here], "-o", "link", "show", _link_name(here, there))
            flags = shown.stdout.split("<", 1)[-1].split(">", 1)[0].split(",")
            if "UP" not in flags or "LOWER_UP" not in flags:
                return False
        return True

    # -- teardown

    def close(self) -> None:
        """Delete the namespaces (their veth ends go with them). Safe to call twice.

        Processes still running inside a namespace keep it alive after its name is
        deleted: stop them first.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors = []
        for name in reversed(self._created):
            result = _ip("netns", "delete", name, check=False)
            if result.returncode != 0:
                errors.append(f"{name}: {result.stderr.strip()}")
        self._created.clear()
        if errors:
            raise NetnsError("could not delete namespaces: " + "; ".join(errors))
