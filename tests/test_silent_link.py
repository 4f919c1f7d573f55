"""A link that goes silent without closing is dropped at the ping timeout, and
dialled again once the peer answers: shown without network namespaces.

The peer is a real `twistd` process, frozen with SIGSTOP: its kernel still
accepts and acknowledges bytes, so no FIN or RST tells the dialler anything;
only the unanswered PINGs do. The dialler runs in this process with short
intervals (`Limits.ping_interval`, `ping_timeout`), so the test takes seconds.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import provider

from dfs_twisted.launcher import NodeProcess, free_port
from dfs_twisted.protocol import Limits, PeerProtocol

from .inprocess import NodeTestCase, eventually, put, start_node

pytestmark = pytest.mark.processes

QUICK = Limits(ping_interval=0.5, ping_timeout=2.0, handshake_timeout=2.0)


class SilentPeerTests(NodeTestCase):
    timeout = 90

    def peer_process(self) -> NodeProcess:
        peer = NodeProcess(free_port(), Path(self.mktemp()).resolve() / "peer", org="frozen")
        self.addCleanup(peer.stop)
        peer.start().wait_ready()
        return peer

    @staticmethod
    def thaw(peer: NodeProcess) -> None:
        if peer.process is not None and peer.process.poll() is None:
            os.kill(peer.pid, signal.SIGCONT)

    def closings(self) -> list[str]:
        """The reasons of the peer connections this process closes from now on."""
        reasons: list[str] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_format", "").startswith("closing peer connection"):
                reasons.append(str(event.get("reason")))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return reasons

    async def test_silent_peer_is_dropped_then_dialled_again(self) -> None:
        peer = self.peer_process()
        peer_id: str = peer.status()["node_id"]
        node = start_node(self, free_port(), [peer.port], "dialler", limits=QUICK)
        await node.ready

        def link() -> PeerProtocol | None:
            live = [s for s in node.registry.live() if s.info.node_id == peer_id]
            return live[0] if live else None

        await eventually(lambda: link() is not None, "the first link")
        first: Any = link()
        reasons = self.closings()

        # Registered last, so it runs first: the node here stops only once the peer
        # answers again, and the peer takes its SIGTERM only once continued.
        self.addCleanup(self.thaw, peer)
        os.kill(peer.pid, signal.SIGSTOP)
        await eventually(lambda: first.closed, "the silent link to be dropped", patience=15)
        self.assertTrue(
            any(r.startswith("no answer to PING") for r in reasons), f"closed for {reasons}"
        )
        # Gone from the live sessions once the connection is down (right after).
        await eventually(lambda: link() is None, "the dropped link to leave the registry")

        os.kill(peer.pid, signal.SIGCONT)
        await eventually(lambda: link() is not None, "the link dialled again", patience=20)
        self.assertIsNot(link(), first)
        # The new link carries a replica.
        _, replicas = await put(node, "after the silence", b"still here")
        self.assertEqual(replicas, 2)
