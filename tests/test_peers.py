"""Peer links: refusals back off, a moved peer keeps one row, an away peer says since when."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from dfs_twisted.launcher import NodeProcess, free_port
from dfs_twisted.options import PeerAddress
from dfs_twisted.peers import REFUSED_MAX_DELAY, PeerRegistry, refusal_delay
from dfs_twisted.protocol import PeerFactory, PeerInfo, PeerProtocol

from .shared import wait_until

ADDRESS = PeerAddress("127.0.0.1", 4000)
PEER = "b" * 64


class _Dialling(Factory):
    protocol = Protocol

    def dialling(self, address: str) -> _Dialling:
        return self


@implementer(IStreamClientEndpoint)
class RefusingPeer:
    """A peer whose TLS works and which then refuses us (or admits us, once asked to)."""

    def __init__(self, clock: Clock, registry: PeerRegistry) -> None:
        self.clock = clock
        self.registry = registry
        self.attempts: list[float] = []
        self.admit = False

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts.append(self.clock.seconds())
        protocol = protocolFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        if self.admit:
            self.registry.add(session(str(ADDRESS)))
        else:
            self.clock.callLater(0.01, self._refuse, protocol)
        return succeed(protocol)

    def _refuse(self, protocol: IProtocol) -> None:
        self.registry.refused(str(ADDRESS), "admission refused: wrong network key")
        protocol.connectionLost(Failure(ConnectionDone()))


def session(dialled: str | None, node_id: str = PEER, listen: str = "127.0.0.1:4000") -> Any:
    class Session:
        info = PeerInfo(node_id, "beta", listen, dialled or listen)
        rtt = 0.001
        bytes_in = bytes_out = 0

        def disconnect(self) -> None:
            pass

    s = Session()
    s.dialled = dialled  # type: ignore[attr-defined]
    return s


@pytest.mark.unit
class RefusalBackoffTests(SynchronousTestCase):
    def test_delays_grow_to_minutes(self) -> None:
        self.assertLess(refusal_delay(1), 10)
        self.assertGreater(refusal_delay(5), 60)
        self.assertLessEqual(refusal_delay(50), REFUSED_MAX_DELAY * 1.1)
        self.assertGreaterEqual(refusal_delay(50), REFUSED_MAX_DELAY * 0.9)

    def test_a_refusing_peer_is_dialled_less_and_less(self) -> None:
        clock = Clock()
        registry = PeerRegistry(clock)
        peer = RefusingPeer(clock, registry)
        registry.dial(ADDRESS, cast(PeerFactory, _Dialling()), None, endpoint=peer)
        registry.startService()
        self.addCleanup(registry.stopService)
        for _ in range(3600):  # an hour, in virtual seconds
            clock.advance(1)
        # TLS succeeds each time, so ClientService alone would dial about once a second.
        self.assertLess(len(peer.attempts), 15)
        gaps = [b - a for a, b in zip(peer.attempts, peer.attempts[1:], strict=False)]
        growing = gaps[:6]
        self.assertEqual(growing, sorted(growing))  # doubling, give or take 10%...
        self.assertTrue(
            all(gap > REFUSED_MAX_DELAY * 0.85 for gap in gaps[8:]), gaps
        )  # ...to minutes
        [row] = registry.status()
        self.assertEqual(
            (row["state"], row["last_error"]), ("refused", "admission refused: wrong network key")
        )

        # Admitted once, the count starts again: a later refusal is retried soon.
        peer.admit = True
        clock.advance(REFUSED_MAX_DELAY * 1.2)
        self.assertEqual(registry.status()[0]["state"], "connected")


@pytest.mark.unit
class StatusRowsTests(SynchronousTestCase):
    def test_a_node_connected_at_a_new_address_replaces_its_old_row(self) -> None:
        pins = {"127.0.0.1:4000": PEER}
        registry = PeerRegistry(Clock(), pinned=pins.get)
        registry.dial(
            ADDRESS, cast(PeerFactory, _Dialling()), None, endpoint=RefusingPeer(Clock(), registry)
        )
        moved = session(None, listen="127.0.0.1:4100")  # it dialled us from its new home
        registry.add(cast(PeerProtocol, moved))
        [row] = registry.status()
        self.assertEqual(
            (row["address"], row["node_id"], row["state"]), ("127.0.0.1:4100", PEER, "connected")
        )
        self.assertIsInstance(row["last_seen"], float)
        registry.remove(cast(PeerProtocol, moved), "gone")
        [row] = registry.status()
        self.assertEqual(
            (row["address"], row["state"], row["org"]), ("127.0.0.1:4000", "connecting", "beta")
        )
        self.assertLessEqual(row["last_seen"], time.time())

    def test_last_seen_survives_a_restart(self) -> None:
        path = Path(tempfile.mkdtemp(prefix="dfs-peers-")) / "peers_seen.json"
        self.addCleanup(shutil.rmtree, path.parent, True)
        registry = PeerRegistry(Clock(), pinned={"127.0.0.1:4000": PEER}.get, seen_file=path)
        registry.startService()
        registry.add(cast(PeerProtocol, session("127.0.0.1:4000")))
        registry.stopService()
        saved = json.loads(path.read_text())
        self.assertEqual(saved[PEER]["org"], "beta")
        again = PeerRegistry(Clock(), pinned={"127.0.0.1:4000": PEER}.get, seen_file=path)
        again.dial(
            ADDRESS, cast(PeerFactory, _Dialling()), None, endpoint=RefusingPeer(Clock(), again)
        )
        [row] = again.status()
        self.assertEqual(row["last_seen"], saved[PEER]["last_seen"])


@pytest.mark.processes
class MovedPeerTests(SynchronousTestCase):
    """Real nodes: B moves to another port; A's status and metrics follow it."""

    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dfs-moved-"))
        self.addCleanup(shutil.rmtree, self.root, True)

    def metrics(self, node: NodeProcess) -> str:
        url = (node.data_dir / "api.url").read_text().strip()
        token = (node.data_dir / "private" / "api_token").read_text().strip()
        request = urllib.request.Request(
            url + "metrics", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text: str = response.read().decode()
            return text

    def test_moved_peer_takes_over_its_row_and_away_peer_says_since_when(self) -> None:
        old_port, new_port = free_port(), free_port()
        a = NodeProcess(free_port(), self.root / "a", [old_port])
        self.addCleanup(a.stop)
        b = NodeProcess(old_port, self.root / "b")
        self.addCleanup(b.stop)
        a.start().wait_ready()
        b.start().wait_ready()
        a.wait_peers(1)
        b_id = b.status()["node_id"]

        # B moves: same data dir (same id), new port, and it dials A from there.
        b.stop()
        b = NodeProcess(new_port, self.root / "b", [a.port])
        self.addCleanup(b.stop)
        b.start().wait_ready()
        wait_until(lambda: [p["state"] for p in a.status()["peers"]] == ["connected"], "B back")
        [row] = a.status()["peers"]
        self.assertEqual((row["node_id"], row["address"]), (b_id, f"127.0.0.1:{new_port}"))
        up = [line for line in self.metrics(a).splitlines() if line.startswith("dfs_peer_up{")]
        self.assertEqual(len(up), 1, up)
        self.assertTrue(up[0].endswith(" 1.0"), up)
        self.assertIn(f'address="127.0.0.1:{new_port}"', up[0])

        # B goes away: one row, with when it was last seen.
        before = time.time()
        b.stop()
        wait_until(lambda: a.status()["peers"][0]["state"] != "connected", "A to see B go")
        [row] = a.status()["peers"]
        self.assertEqual(row["org"], f"node-{old_port}")
        self.assertLessEqual(before - 60, row["last_seen"])
        self.assertLessEqual(row["last_seen"], time.time())
        self.assertIn("last seen", a.dfs("status").stdout.decode())
