"""PeerProtocol driven in memory: hostile and out-of-order input closes the connection.

No TLS here: a StringTransport stands in for the TLS transport and reports a
certificate when asked. The handler is a recording fake standing for the node's `files.Server`.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import cast

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.identity import PeerPins, ensure_private_dir
from dfs_twisted.protocol import (
    PING_INTERVAL,
    TURN_BYTES,
    Limits,
    PeerFactory,
    PeerProtocol,
    RemoteError,
    SessionClosed,
)
from dfs_twisted.session import PeerClient
from dfs_twisted.store import BlobKey

from .fakes import FakeHandler, Source, TLSStringTransport, identity, sent

pytestmark = pytest.mark.unit

OWNER = "c" * 64
BLOB = "d" * 64


def tampered(frame: bytes, **changes: object) -> bytes:
    """``frame`` with fields of its JSON body changed, bypassing encode()'s checks."""
    [decoded] = wire.FrameDecoder().feed(frame)
    body = json.loads(bytes(decoded.body))
    body.update(changes)
    raw = json.dumps(body).encode()
    return wire.HEADER.pack(decoded.type, decoded.flags, decoded.request_id, len(raw)) + raw


class HostileInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.me = identity(self)
        self.peer = identity(self)
        root = Path(self.mktemp())
        ensure_private_dir(root)
        self.pins = PeerPins(root / "known_peers.json")
        self.refusals: list[tuple[str, str]] = []
        self.clock = task.Clock()
        self.handler = FakeHandler()
        self.factory = PeerFactory(
            self.me,
            self.pins,
            self.handler,
            "me",
            "127.0.0.1:3000",
            cast(IReactorTime, self.clock),  # Clock provides it; mypy cannot see that
            on_refused=lambda address, reason: self.refusals.append((address, reason)),
        )

    def connect(
        self, *, dialled: str | None = None, handshake: bool = True
    ) -> tuple[PeerProtocol, TLSStringTransport]:
        factory = self.factory if dialled is None else self.factory.dialling(dialled)
        proto = factory.buildProtocol(None)
        transport = TLSStringTransport(self.peer)
        proto.makeConnection(transport)
        if handshake:
            proto.handshakeCompleted()
        return proto, transport

    def hello(self, **changes: object) -> bytes:
        """The peer's HELLO frame, optionally with fields changed to anything."""
        frame = wire.encode(
            wire.Hello(wire.PROTOCOL_VERSION, self.peer.node_id, "peer", "127.0.0.1:4000"), 0
        )
        return tampered(frame, **changes) if changes else frame

    def connected(self) -> tuple[PeerProtocol, TLSStringTransport]:
        proto, transport = self.connect()
        proto.dataReceived(self.hello())
        self.assertEqual(self.handler.ready, [proto])
        transport.clear()
        return proto, transport

    def assertClosed(self, proto: PeerProtocol, transport: TLSStringTransport) -> None:
        self.assertTrue(transport.disconnecting)
        # Whatever arrives after the close is ignored: nothing is sent, nothing dispatched.
        transport.clear()
        proto.dataReceived(self.hello())
        self.assertEqual(transport.value(), b"")

    def lose(self, proto: PeerProtocol) -> None:
        proto.connectionLost(Failure(ConnectionDone()))

    # -- the happy path, for contrast

    def test_hello_exchange_accepted(self) -> None:
        proto, transport = self.connect()
        # The acceptor says nothing until the dialler introduced itself.
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(self.hello())
        [hello] = sent(transport)
        assert isinstance(hello, wire.Hello)
        self.assertEqual((hello.node_id, hello.org), (self.me.node_id, "me"))
        assert proto.peer is not None
        self.assertEqual(proto.info.node_id, self.peer.node_id)
        self.assertEqual(proto.info.org, "peer")
        self.assertEqual(self.successResultOf(proto.ready), proto)
        self.assertFalse(transport.disconnecting)
        # The handshake timer was cancelled by the HELLO; what is left is the pinger,
        # and the connection's end stops it.
        [pinger] = self.clock.getDelayedCalls()
        self.assertEqual(pinger.getTime(), PING_INTERVAL)
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.handler.lost), 1)

    def test_dialler_speaks_first(self) -> None:
        proto, transport = self.connect(dialled="127.0.0.1:4000")
        [hello] = sent(transport)
        assert isinstance(hello, wire.Hello)
        self.assertEqual(hello.node_id, self.me.node_id)
        transport.clear()
        proto.dataReceived(self.hello())
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.handler.ready, [proto])

    def test_hello_split_byte_by_byte(self) -> None:
        proto, transport = self.connect()
        for byte in self.hello():
            proto.dataReceived(bytes([byte]))
        self.assertEqual(self.handler.ready, [proto])
        self.assertFalse(transport.disconnecting)

    def test_ping_measures_rtt_and_pings_are_answered(self) -> None:
        proto, transport = self.connected()
        self.clock.advance(PING_INTERVAL)
        [ping] = wire.FrameDecoder().feed(transport.value())
        self.assertEqual(wire.decode(ping), wire.Ping())
        self.clock.advance(0.25)
        proto.dataReceived(wire.encode(wire.Ack(), ping.request_id, reply=True))
        self.assertEqual(proto.rtt, 0.25)
        # The peer's PING gets an ACK.
        transport.clear()
        proto.dataReceived(wire.encode(wire.Ping(), 9))
        [ack] = wire.FrameDecoder().feed(transport.value())
        self.assertEqual((wire.decode(ack), ack.request_id, ack.flags), (wire.Ack(), 9, 2))

    # -- hostile input

    def test_garbage_closes(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"\xff" * 64)
        self.assertClosed(proto, transport)
        self.assertEqual(self.handler.ready, [])
        failures: list[Failure] = []
        proto.ready.addErrback(failures.append)
        self.lose(proto)
        self.assertEqual([f.type for f in failures], [SessionClosed])
        self.assertEqual(self.handler.lost, [])

    def test_lost_before_hello_logs_no_unhandled_error(self) -> None:
        proto, _ = self.connect()
        self.lose(proto)
        del proto
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_garbage_after_hello_closes(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertClosed(proto, transport)
        self.lose(proto)
        self.assertEqual(len(self.handler.lost), 1)

    def test_huge_length_closes_without_waiting_for_body(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.HEADER.pack(wire.MessageType.STORE, 0, 1, 2**31))
        self.assertClosed(proto, transport)

    def test_frame_before_tls_handshake_closes(self) -> None:
        proto, transport = self.connect(handshake=False)
        proto.dataReceived(self.hello())
        self.assertClosed(proto, transport)
        self.assertEqual(self.handler.ready, [])

    def test_request_before_hello_closes(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(wire.encode(wire.Fetch(OWNER, BLOB), 1))
        self.assertClosed(proto, transport)
        self.assertEqual(self.handler.ready, [])
        self.assertEqual(sent(transport), [])

    def test_wrong_version_closes(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(self.hello(version=wire.PROTOCOL_VERSION + 1))
        # Refused with a reason the peer can show, and no HELLO of ours.
        [refusal] = sent(transport)
        assert isinstance(refusal, wire.Error)
        self.assertEqual(refusal.code, "refused")
        self.assertIn("version", refusal.message)
        self.assertClosed(proto, transport)
        self.assertIsNone(proto.peer)
        self.assertEqual(self.handler.ready, [])

    def test_hello_with_another_node_id_closes(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(self.hello(node_id=self.me.node_id))
        self.assertClosed(proto, transport)
        self.assertEqual(self.handler.ready, [])

    def test_malformed_hello_closes(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(self.hello(org="bad\norg"))
        self.assertClosed(proto, transport)

    def test_second_hello_closes(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(self.hello())
        self.assertClosed(proto, transport)
        self.assertEqual(len(self.handler.ready), 1)

    def test_data_for_unknown_request_closes(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.data_header(7, 3, end=False, reply=False) + b"abc")
        self.assertClosed(proto, transport)

    def test_reply_data_for_unknown_request_closes(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.data_header(7, 3, end=True, reply=True) + b"abc")
        self.assertClosed(proto, transport)

    def test_reply_for_unknown_request_closes(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.encode(wire.Ack(), 9, reply=True))
        self.assertClosed(proto, transport)

    def test_reply_type_sent_as_request_closes(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.encode(wire.Ack(), 9))
        self.assertClosed(proto, transport)

    def test_data_before_fetch_reply_closes(self) -> None:
        proto, transport = self.connected()

        class Sink:
            def started(self, size: int) -> None:
                pass

            def data(self, payload: bytes | memoryview) -> None:
                raise AssertionError("no data may reach the sink")

        reply = proto.fetch(wire.Fetch(OWNER, BLOB), Sink())
        frames = wire.FrameDecoder().feed(transport.value())
        request_id = frames[0].request_id
        proto.dataReceived(wire.data_header(request_id, 3, end=True, reply=True) + b"abc")
        self.assertClosed(proto, transport)
        self.lose(proto)
        self.failureResultOf(reply, SessionClosed)

    def test_handshake_timeout_closes(self) -> None:
        proto, transport = self.connect()
        self.clock.advance(Limits().handshake_timeout - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertClosed(proto, transport)

    def test_connected_to_itself_closes(self) -> None:
        proto = self.factory.buildProtocol(None)
        transport = TLSStringTransport(self.me)
        proto.makeConnection(transport)
        proto.handshakeCompleted()
        self.assertTrue(transport.aborted)
        self.assertEqual(transport.value(), b"")  # not even a HELLO

    def test_no_certificate_closes(self) -> None:
        proto = self.factory.buildProtocol(None)
        transport = TLSStringTransport(None)
        proto.makeConnection(transport)
        proto.handshakeCompleted()
        self.assertTrue(transport.aborted)

    # -- pinning of dialled addresses

    def test_dialled_address_pinned_on_first_contact(self) -> None:
        _, transport = self.connect(dialled="127.0.0.1:4000")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.pins.get("127.0.0.1:4000"), self.peer.node_id)

    def test_dialled_address_pinned_to_another_id_refused(self) -> None:
        self.pins.check("127.0.0.1:4000", "e" * 64)
        _, transport = self.connect(dialled="127.0.0.1:4000")
        self.assertTrue(transport.disconnecting)
        # No HELLO to an impostor: only the reason of the refusal.
        self.assertEqual([type(m) for m in sent(transport)], [wire.Error])
        self.assertEqual(len(self.refusals), 1)
        address, reason = self.refusals[0]
        self.assertEqual(address, "127.0.0.1:4000")
        self.assertIn("pinned", reason)
        self.assertEqual(self.pins.get("127.0.0.1:4000"), "e" * 64)

    def test_accepted_connections_are_not_pinned(self) -> None:
        self.connect()
        self.assertFalse(Path(self.pins._path).exists())

    # -- refusals are answered, not fatal

    def test_refused_store_answers_error_and_discards_data(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.encode(wire.Store(OWNER, BLOB, 3, 1), 5))
        proto.dataReceived(wire.data_header(5, 3, end=True, reply=False) + b"abc")
        frames = wire.FrameDecoder().feed(transport.value())
        self.assertEqual(
            [(f.request_id, wire.decode(f)) for f in frames],
            [(5, wire.Error("forbidden", "not yours"))],
        )
        self.assertFalse(transport.disconnecting)
        # The stream ended, so its request id is free again.
        proto.dataReceived(wire.data_header(5, 1, end=True, reply=False) + b"x")
        self.assertClosed(proto, transport)

    def test_refused_delete_answers_error(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.encode(wire.Delete(OWNER, BLOB, 1, OWNER, "00" * 64), 3))
        frames = wire.FrameDecoder().feed(transport.value())
        self.assertEqual(wire.decode(frames[0]), wire.Error("forbidden", "not yours"))
        self.assertTrue(frames[0].flags & wire.FLAG_REPLY)
        self.assertFalse(transport.disconnecting)

    def test_remote_error_fails_the_request(self) -> None:
        proto, transport = self.connected()
        reply = proto.request(wire.Delete(OWNER, BLOB, 1, OWNER, "00" * 64))
        request_id = wire.FrameDecoder().feed(transport.value())[0].request_id
        proto.dataReceived(wire.encode(wire.Error("forbidden", "no"), request_id, reply=True))
        error = self.failureResultOf(reply, RemoteError).value
        assert isinstance(error, RemoteError)
        self.assertEqual(error.code, "forbidden")
        self.assertFalse(transport.disconnecting)

    # -- a peer that reads as fast as we send: this transport never pauses

    def push(self, proto: PeerProtocol, size: int) -> tuple[Deferred[None], Source]:
        blob = Source(bytes(size))
        client = PeerClient(proto)
        return Deferred.fromCoroutine(client.push(BlobKey(OWNER, BLOB), 1, blob)), blob

    def test_a_refused_push_stops_within_a_turn_of_the_reactor(self) -> None:
        # A relayed copy the peer holds already: the link waits for the reactor's next
        # turn after TURN_BYTES, so the refusal that came meanwhile stops the push
        # long before the blob's end (not after sending it all, unheard).
        proto, transport = self.connected()
        pushing, blob = self.push(proto, 8 * TURN_BYTES)
        self.assertLess(len(transport.value()), 2 * TURN_BYTES)
        self.assertNoResult(pushing)
        request_id = wire.FrameDecoder().feed(transport.value())[0].request_id
        proto.dataReceived(wire.encode(wire.Error("have", "held"), request_id, reply=True))
        self.clock.advance(0)
        error = self.failureResultOf(pushing, RemoteError).value
        assert isinstance(error, RemoteError)
        self.assertEqual(error.code, "have")
        self.assertLess(blob.position, 3 * TURN_BYTES)
        self.assertEqual(self.clock.getDelayedCalls()[1:], [])  # the pinger's alone

    def test_a_push_whose_blob_cannot_be_read_ends_its_stream(self) -> None:
        # The peer would otherwise wait for the rest (and its END) until it gave up.
        proto, transport = self.connected()
        blob = Source(bytes(3 * TURN_BYTES))
        blob.failing = OSError(5, "Input/output error")
        pushing = Deferred.fromCoroutine(PeerClient(proto).push(BlobKey(OWNER, BLOB), 1, blob))
        self.failureResultOf(pushing, OSError)
        frames = wire.FrameDecoder().feed(transport.value())
        self.assertEqual(
            [wire.decode(f) for f in frames],
            [wire.Store(OWNER, BLOB, 3 * TURN_BYTES, 1), wire.Abort("the sender failed")],
        )

    def test_a_push_goes_on_turn_after_turn_to_its_end(self) -> None:
        proto, transport = self.connected()
        size = 3 * TURN_BYTES + 5
        pushing, _ = self.push(proto, size)
        self.assertLess(len(transport.value()), 2 * TURN_BYTES)
        self.clock.advance(0)  # a Clock runs the calls made meanwhile too: every turn
        frames = wire.FrameDecoder().feed(transport.value())
        self.assertTrue(frames[-1].flags & wire.FLAG_END)
        self.assertEqual(sum(len(f.body) for f in frames[1:]), size)
        proto.dataReceived(wire.encode(wire.Ack(), frames[0].request_id, reply=True))
        self.assertIsNone(self.successResultOf(pushing))
