"""The HTTP API of a real node process against a local user who holds sockets.

Nodes run as `twistd` processes on free ports (stopped by PID). ``prlimit`` starts a
node with a small open-file limit, so that an attack that would exhaust it does so
in a few hundred sockets.
"""

from __future__ import annotations

import http.client
import os
import select
import shutil
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import NodeProcess, free_port

from .environment import cannot_run
from .shared import wait_until

pytestmark = pytest.mark.processes

IDLE_SOCKETS = 300
TRICKLERS = 5
# A header line every second: the trickle would last this long if nobody cut it.
TRICKLE_LINES = 40


def node_fds(node: NodeProcess) -> int:
    return len(os.listdir(f"/proc/{node.pid}/fd"))


def limits(node: NodeProcess) -> tuple[int, int]:
    for line in Path(f"/proc/{node.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the node closed or reset this connection (nothing is read from it)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class ApiProcessTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dfs-apilimits-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        self.sockets: list[socket.socket] = []
        self.addCleanup(self._close_sockets)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def start(self, *extra_prefix: str, peers: tuple[int, ...] = ()) -> NodeProcess:
        node = NodeProcess(free_port(), self.root / "node", peers, prefix=list(extra_prefix))
        self.addCleanup(node.stop)
        node.start()
        node.wait_ready()
        return node

    def address(self, node: NodeProcess) -> tuple[str, int]:
        url = urlsplit((node.data_dir / "api.url").read_text().strip())
        assert url.hostname is not None and url.port is not None
        return url.hostname, url.port

    def token(self, node: NodeProcess) -> str:
        return (node.data_dir / "private" / "api_token").read_text().strip()

    def connect(self, node: NodeProcess) -> socket.socket:
        sock = socket.create_connection(self.address(node), timeout=30)
        self.sockets.append(sock)
        return sock

    def status_with_token(self, node: NodeProcess) -> int:
        host, port = self.address(node)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request(
                "GET", "/v1/status", headers={"Authorization": f"Bearer {self.token(node)}"}
            )
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


class ConnectionFloodTests(ApiProcessTestCase):
    def prlimit(self, soft: int, hard: int) -> list[str]:
        binary = shutil.which("prlimit")
        if binary is None:
            cannot_run("no prlimit (util-linux) on PATH")
        return [binary, f"--nofile={soft}:{hard}", "--"]

    def test_idle_and_trickling_sockets_do_not_lock_out_the_token_holder(self) -> None:
        # Soft and hard limit alike: the node cannot raise it, only the caps protect it.
        node = self.start(*self.prlimit(200, 200))
        self.assertEqual(limits(node), (200, 200))
        idle = [self.connect(node) for _ in range(IDLE_SOCKETS)]
        self.assertEqual(self.status_with_token(node), 200)
        # The node let go of the oldest idlers instead of running out of descriptors.
        wait_until(lambda: sum(map(closed_by_peer, idle)) >= IDLE_SOCKETS - 64, "idlers dropped")
        self.assertLess(node_fds(node), 150)

        # Now heads that trickle in, a header line a second: without the token, and
        # on a connection whose first request had it (trusted, but a head is a head).
        trusted = self.connect(node)
        trusted.sendall(
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + self.token(node).encode()
            + b"\r\n\r\n"
        )
        self.assertIn(b"200 OK", trusted.recv(4096))
        tricklers = [self.connect(node) for _ in range(TRICKLERS)] + [trusted]
        for sock in tricklers:
            sock.sendall(b"GET /v1/status HTTP/1.1\r\n")
        lines = 0
        while lines < TRICKLE_LINES and not all(map(closed_by_peer, tricklers)):
            time.sleep(1)
            lines += 1
            for i, sock in enumerate(tricklers):
                if not closed_by_peer(sock):
                    try:
                        sock.sendall(b"X-Line-%d: y\r\n" % i)
                    except OSError:
                        pass  # closed between the check and the send
        self.assertTrue(all(map(closed_by_peer, tricklers)), "a trickled head kept its socket")
        self.assertLess(lines, TRICKLE_LINES)
        self.assertEqual(self.status_with_token(node), 200)

    def test_the_soft_open_file_limit_is_raised_at_start(self) -> None:
        node = self.start(*self.prlimit(256, 4096))
        self.assertEqual(limits(node), (4096, 4096))


class AbsurdLengthTests(ApiProcessTestCase):
    def test_absurd_content_length_leaves_nothing_open_or_on_disk(self) -> None:
        # With a peer connected, as the put would stream to it.
        a = NodeProcess(free_port(), self.root / "a")
        b = NodeProcess(free_port(), self.root / "b", [a.port])
        for node in (a, b):
            self.addCleanup(node.stop)
            node.start()
        b.wait_ready()
        b.wait_peers(1)
        baseline = node_fds(b)
        token = self.token(b).encode()
        for i in range(20):
            sock = self.connect(b)
            sock.sendall(
                b"PUT /v1/files/absurd-%d HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Content-Length: 99999999999999999999999\r\n\r\n" % (i, token)
            )
            answer = sock.recv(4096)
            self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
            self.assertIn(b"file too large", answer)
            sock.close()
        wait_until(lambda: node_fds(b) <= baseline, "the node's descriptors to settle")
        tmp = b.data_dir / "store" / "tmp"
        self.assertEqual(list(tmp.iterdir()) if tmp.exists() else [], [])
        # The peer link survived: nothing absurd was announced to it.
        self.assertEqual(
            [p["state"] for p in b.status()["peers"]], ["connected"], b.status()["peers"]
        )
        self.assertEqual(self.status_with_token(b), 200)
