"""A node that cannot start says why in one line and exits non-zero, however it is run.

Real `twistd` processes: the plugin (`twistd -n dfs`), `tac/node.tac` and
`tac/three_nodes.tac`, against a port someone else holds, a private/ the node
cannot read, and bad flag values. Also `--no-create` and the org name kept in
the data dir.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import BIN, NodeProcess, free_port

from .environment import without_root_powers

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parent.parent
TAC = REPO / "tac"


def occupy(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port, as another program would hold it."""
    s = socket.socket()
    # As Twisted does: a port in TIME-WAIT is free to listen on.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFS_")}
    env.update(extra)
    return env


class StartupTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-startup-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def twistd(
        self, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run twistd to its end: a node that cannot start must end by itself."""
        argv = [*prefix, str(BIN / "twistd"), "-n", f"--logfile={self.dir / 'twistd.log'}", *args]
        return subprocess.run(
            argv,
            cwd=self.dir,
            env=env or clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def assert_one_line(self, result: subprocess.CompletedProcess[str], *needles: str) -> str:
        self.assertNotEqual(result.returncode, 0, f"started: {result.args}")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, f"expected one line on stderr: {result.stderr!r}")
        self.assertTrue(lines[0].startswith("dfs: "), lines[0])
        for needle in needles:
            self.assertIn(needle, lines[0])
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        return lines[0]


class PortTakenTests(StartupTestCase):
    def test_peer_port_taken(self) -> None:
        port = free_port()
        holder = occupy(port)
        self.addCleanup(holder.close)
        data = self.dir / "node"
        result = self.twistd("dfs", "--port", str(port), "--data-dir", str(data))
        self.assert_one_line(result, f"127.0.0.1:{port}", "in use")
        # twistd never got as far as its pidfile, so none is left behind.
        self.assertFalse((data / "twistd.pid").exists())
        self.assertFalse((data / "api.url").exists())

    def test_api_port_taken(self) -> None:
        api = free_port()
        holder = occupy(api)
        self.addCleanup(holder.close)
        result = self.twistd(
            "--pidfile=",
            "dfs",
            "--port",
            str(free_port()),
            "--data-dir",
            str(self.dir / "node"),
            "--api",
            f"tcp:{api}:interface=127.0.0.1",
        )
        self.assert_one_line(result, "the API", str(api), "in use")

    def test_node_tac_port_taken(self) -> None:
        port = free_port()
        holder = occupy(port)
        self.addCleanup(holder.close)
        env = clean_env(DFS_PORT=str(port), DFS_DATA_DIR=str(self.dir / "node"))
        result = self.twistd("--pidfile=", "-y", str(TAC / "node.tac"), env=env)
        self.assert_one_line(result, f"127.0.0.1:{port}", "in use")

    def test_three_nodes_tac_port_taken(self) -> None:
        # Its ports are fixed: take 4000 if it is free; if something else holds it,
        # the tac must fail just the same.
        try:
            holder = occupy(4000)
            self.addCleanup(holder.close)
        except OSError:
            pass
        result = self.twistd(
            "--pidfile=", "-y", str(TAC / "three_nodes.tac"), env=clean_env(DFS_ROOT=str(self.dir))
        )
        self.assert_one_line(result, "cannot listen on the peer port 127.0.0.1:", "in use")


class PrivateDirTests(StartupTestCase):
    def test_unreadable_private_dir(self) -> None:
        node = NodeProcess(free_port(), self.dir / "node")
        self.addCleanup(node.stop)
        node.start().wait_ready()
        node.stop()
        (node.data_dir / "private").chmod(0o000)
        self.addCleanup((node.data_dir / "private").chmod, 0o700)
        # root reads anything: without its power to ignore file permissions, then.
        prefix = without_root_powers()
        result = self.twistd(
            "--pidfile=",
            "dfs",
            "--port",
            str(node.port),
            "--data-dir",
            str(node.data_dir),
            prefix=prefix,
        )
        self.assert_one_line(result, "cannot start node", "Permission denied")

    def test_damaged_node_key(self) -> None:
        node = NodeProcess(free_port(), self.dir / "node")
        self.addCleanup(node.stop)
        node.start().wait_ready()
        node.stop()
        (node.data_dir / "private" / "node.key").write_text("not a key\n")
        result = self.twistd(
            "--pidfile=", "dfs", "--port", str(node.port), "--data-dir", str(node.data_dir)
        )
        self.assert_one_line(result, "cannot start node")


class BadFlagTests(StartupTestCase):
    def test_bad_values_for_the_plugin(self) -> None:
        port = str(free_port())
        for args, needle in [
            (["--port", "x"], "not a port number"),
            (["--port", port, "--quota", "lots"], "--quota"),
            (["--port", port, "--scrub-period", "soon"], "--scrub-period"),
            (["--port", port, "--log-level", "loud"], "--log-level"),
            (["--port", port, "--nonsense"], "nonsense"),
            (["--port", port, "--network-key", str(self.dir / "absent.key")], "absent.key"),
        ]:
            result = self.twistd("--pidfile=", "dfs", "--data-dir", str(self.dir / "n"), *args)
            self.assert_one_line(result, needle)
            # Nothing was created for a node that never started.
            self.assertFalse((self.dir / "n").exists(), args)

    def test_bad_value_for_node_tac(self) -> None:
        env = clean_env(DFS_PORT="70000", DFS_DATA_DIR=str(self.dir / "n"))
        result = self.twistd("--pidfile=", "-y", str(TAC / "node.tac"), env=env)
        self.assert_one_line(result, "port out of range")

    def test_api_on_every_interface_is_refused(self) -> None:
        for api in ("tcp:9300", "tcp:port=9300", "tcp:9300:interface=0.0.0.0"):
            result = self.twistd("--pidfile=", "dfs", "--port", str(free_port()), "--api", api)
            self.assert_one_line(result, "plain HTTP", "--api-tls")
