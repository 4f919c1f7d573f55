"""contrib/dfs.service: systemd accepts it, rates its hardening, and its ExecStart runs a node.

The node is run the way the unit's ExecStart runs it (the same command line, its
paths pointed at a temporary state and credentials directory), with a
$NOTIFY_SOCKET the test listens on, as systemd would for Type=notify.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import BIN, NodeProcess, free_port

from .environment import cannot_run

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "contrib" / "dfs.service"
INSTALLED = "/opt/dfs-twisted"
STATE = "/var/lib/dfs"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        cannot_run("systemd-analyze is not installed (the unit is checked where it is)")
    return path


def directives(text: str, name: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(name + "=")]


class UnitFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-unit-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        # As installed: the unit names /opt/dfs-twisted; here the code is in REPO.
        self.unit = self.dir / "dfs.service"
        self.unit.write_text(UNIT.read_text().replace(INSTALLED, str(REPO)))

    def test_systemd_verifies_it(self) -> None:
        result = subprocess.run(
            [systemd_analyze(), "verify", str(self.unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.strip(), "")

    def test_hardening_is_rated_ok(self) -> None:
        result = subprocess.run(
            [systemd_analyze(), "security", "--offline=true", str(self.unit)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "--offline" in result.stderr:
            cannot_run("this systemd-analyze cannot rate a unit file offline")
        match = re.search(r"Overall exposure level for dfs.service: ([\d.]+) (\w+)", result.stdout)
        assert match is not None, result.stdout + result.stderr
        self.assertLessEqual(float(match.group(1)), 2.0, match.group(0))
        self.assertIn(match.group(2), ("SAFE", "OK"))

    def test_unit_settings(self) -> None:
        text = UNIT.read_text()
        self.assertEqual(directives(text, "Type"), ["notify"])
        self.assertEqual(directives(text, "StateDirectory"), ["dfs"])
        self.assertEqual(
            directives(text, "LoadCredential"), ["network.key:/etc/dfs/federation.key"]
        )
        [exec_start] = directives(text, "ExecStart")
        self.assertIn("--no-create", exec_start)
        self.assertIn("%d/network.key", exec_start)


class ExecStartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-execstart-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.state = self.dir / "state"
        self.credentials = self.dir / "credentials"
        self.credentials.mkdir(mode=0o700)
        self.notify_path = self.dir / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(60)
        self.addCleanup(self.notify.close)

    def exec_start(self) -> list[str]:
        [line] = directives(UNIT.read_text(), "ExecStart")
        line = line.replace(INSTALLED, str(REPO)).replace(STATE, str(self.state))
        return [arg.replace("%d", str(self.credentials)) for arg in shlex.split(line)]

    def start(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DFS_")}
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        process = subprocess.Popen(
            self.exec_start(),
            env=env,
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

        def stop() -> None:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()

        self.addCleanup(stop)
        return process

    def test_a_node_runs_as_the_unit_starts_it(self) -> None:
        port = free_port()
        # The documented steps: the network key in place, then dfs init once.
        key = subprocess.run(
            [str(BIN / "dfs"), "network-key", "create", str(self.credentials / "network.key")],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(key.returncode, 0, key.stderr)
        init = subprocess.run(
            [str(BIN / "dfs"), "init", str(self.state), "--port", str(port), "--org", "globex"],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(init.returncode, 0, init.stderr)
        process = self.start()
        message = self.notify.recv(4096)  # Type=notify: systemd waits for this
        self.assertEqual(message, b"READY=1")
        node = NodeProcess(port, self.state)
        node.process = process
        status = node.status()
        self.assertEqual(status["org"], "globex")
        self.assertEqual(node.dfs("status", "--json").returncode, 0)
        os.kill(process.pid, signal.SIGTERM)
        self.assertEqual(self.notify.recv(4096), b"STOPPING=1")
        # twistd ends by the signal it was sent, which systemd counts as a clean stop.
        self.assertIn(process.wait(60), (0, -signal.SIGTERM))

    def test_an_empty_state_directory_is_refused(self) -> None:
        self.state.mkdir(mode=0o700)
        (self.credentials / "network.key").write_text("dfs-network-key-v1\n" + "ab" * 32 + "\n")
        process = self.start()
        self.assertNotEqual(process.wait(60), 0)
        assert process.stderr is not None
        stderr = process.stderr.read().decode()
        self.assertEqual(len(stderr.splitlines()), 1, stderr)
        self.assertIn("dfs init", stderr)
        self.assertEqual(list(self.state.iterdir()), [])
