"""The handshake's states, with no connection: each event, and what it decides."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.admission import Admission, NetworkKey
from dfs_twisted.handshake import Close, Handshake, Ready, Refuse, SendHello, Stage
from dfs_twisted.identity import PeerPins

pytestmark = pytest.mark.unit

ME, PEER, OTHER = "a" * 64, "b" * 64, "c" * 64
BINDING = b"\x01" * 32


class HandshakeTests(SynchronousTestCase):
    def make(
        self,
        dialled: str | None = None,
        admission: Admission | None = None,
        over_limit: str | None = None,
        pins: PeerPins | None = None,
    ) -> Handshake:
        return Handshake(
            ME,
            dialled,
            admission or Admission(),
            pins or PeerPins(Path(self.mktemp())),
            lambda: BINDING,
            lambda _node: over_limit,
            lambda: "127.0.0.1:5555",
        )

    def hello(
        self, node_id: str = PEER, version: int = wire.PROTOCOL_VERSION, **kw: str
    ) -> wire.Hello:
        return wire.Hello(version, node_id, "peer", "127.0.0.1:7000", **kw)  # type: ignore[arg-type]

    def test_the_dialler_speaks_first(self) -> None:
        h = self.make(dialled="127.0.0.1:7000")
        self.assertEqual(h.tls_done(PEER), [SendHello()])
        self.assertEqual(h.stage, Stage.AWAITING_HELLO)
        [ready] = h.hello(self.hello())
        assert isinstance(ready, Ready)
        self.assertEqual((ready.info.node_id, ready.info.address), (PEER, "127.0.0.1:7000"))
        self.assertEqual(h.stage, Stage.READY)

    def test_the_acceptor_answers_only_once_the_dialler_passed(self) -> None:
        h = self.make()
        self.assertEqual(h.tls_done(PEER), [])
        steps = h.hello(self.hello())
        self.assertEqual([type(s) for s in steps], [SendHello, Ready])
        assert isinstance(steps[1], Ready)
        self.assertEqual(steps[1].info.address, "127.0.0.1:5555")

    def test_what_closes_or_refuses_at_tls(self) -> None:
        self.assertEqual(self.make().tls_done(None), [Close("no client certificate")])
        self.assertEqual(self.make().tls_done(ME), [Close("connected to itself")])
        allow = Admission(allowed=frozenset({OTHER}))
        [refusal] = self.make(admission=allow).tls_done(PEER)
        self.assertEqual(refusal, Refuse("admission refused: node id not in the allow list"))
        dialled = self.make(dialled="127.0.0.1:7000")
        dialled.tls_done(PEER)  # pinned now
        again = Handshake(
            ME, "127.0.0.1:7000", Admission(), dialled._pins, lambda: None, lambda _: None, str
        )
        [pinned] = again.tls_done(OTHER)
        assert isinstance(pinned, Refuse)
        self.assertIn("pinned to", pinned.reason)
        self.assertEqual(again.stage, Stage.CLOSED)

    def test_what_refuses_a_hello(self) -> None:
        h = self.make()
        h.tls_done(PEER)
        [refusal] = h.hello(self.hello(version=wire.PROTOCOL_VERSION + 1))
        assert isinstance(refusal, Refuse)
        self.assertIn("protocol version", refusal.reason)
        key = NetworkKey.generate()
        keyed = self.make(admission=Admission(network_key=key))
        keyed.tls_done(PEER)
        [wrong] = keyed.hello(self.hello(proof=NetworkKey.generate().proof(BINDING, PEER)))
        self.assertEqual(wrong, Refuse("admission refused: wrong network key"))
        right = self.make(admission=Admission(network_key=key))
        right.tls_done(PEER)
        self.assertIsInstance(right.hello(self.hello(proof=key.proof(BINDING, PEER)))[-1], Ready)
        full = self.make(over_limit="too many peers connected")
        full.tls_done(PEER)
        self.assertEqual(full.hello(self.hello()), [Refuse("too many peers connected")])

    def test_protocol_breaks(self) -> None:
        with self.assertRaises(wire.ProtocolError):
            self.make().hello(self.hello())  # before TLS
        h = self.make()
        h.tls_done(PEER)
        with self.assertRaises(wire.ProtocolError):
            h.hello(wire.Ping())
        with self.assertRaises(wire.ProtocolError):
            h.hello(self.hello(node_id=OTHER))  # not the certificate's id
