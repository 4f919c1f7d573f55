"""The multiplexer of a session, with no transport: frames in, frames out."""

from __future__ import annotations

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.mux import Multiplexer
from dfs_twisted.session import RemoteError, SessionClosed

from .fakes import A, B, Handler, Sink, Source, Wire

pytestmark = pytest.mark.unit


class MultiplexerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = Wire()
        self.handler = Handler()
        self.mux = Multiplexer(object(), self.handler, self.out, max_streams=2)  # type: ignore[arg-type]

    def receive(self, message: wire.Message, request_id: int, *, reply: bool = False) -> None:
        for f in wire.FrameDecoder().feed(wire.encode(message, request_id, reply=reply)):
            self.mux.received(f, wire.decode(f))

    def test_requests_are_matched_to_replies_by_id(self) -> None:
        first = self.mux.request(wire.Digest(A))
        second = self.mux.request(wire.Digest(B))
        [(f1, _), (f2, _)] = self.out.sent
        self.receive(wire.DigestReply(B, 2), f2.request_id, reply=True)
        self.receive(wire.Error("not_found", "no"), f1.request_id, reply=True)
        self.assertEqual(self.successResultOf(second), wire.DigestReply(B, 2))
        self.assertEqual(self.failureResultOf(first, RemoteError).value.code, "not_found")
        with self.assertRaises(wire.ProtocolError):
            self.receive(wire.Ack(), 99, reply=True)

    def test_control_requests_are_answered_by_the_handler(self) -> None:
        self.receive(wire.Digest(A), 5)
        self.receive(wire.Head(A, B), 6)
        self.receive(wire.Ping(), 7)
        answers = {f.request_id: m for f, m in self.out.sent}
        self.assertEqual(answers[5], wire.DigestReply(A, 3))
        self.assertEqual(answers[6], wire.Error("not_found", "nothing here"))
        self.assertEqual(answers[7], wire.Ack())
        self.assertTrue(all(f.flags & wire.FLAG_REPLY for f, _ in self.out.sent))

    def test_a_store_streams_into_the_handlers_blob_and_is_acked(self) -> None:
        self.receive(wire.Store(A, B, 6, 1), 3)
        self.receive(wire.Data(b"abc", end=False), 3)
        self.assertTrue(self.mux.busy)
        self.receive(wire.Data(b"def", end=True), 3)
        [blob] = self.handler.blobs
        self.assertEqual((blob.data, blob.finished), (b"abcdef", True))
        self.assertEqual(self.out.messages(), [wire.Ack()])
        self.assertFalse(self.mux.busy)

    def test_a_store_refused_mid_stream_drops_the_rest(self) -> None:
        self.handler.refuse_after = 2
        self.receive(wire.Store(A, B, None, 1), 3)
        self.receive(wire.Data(b"abc", end=False), 3)
        self.receive(wire.Data(b"def", end=True), 3)  # dropped, no error
        [blob] = self.handler.blobs
        self.assertEqual(blob.aborted, "full")
        self.assertEqual(self.out.messages(), [wire.Error("quota", "full")])

    def test_at_most_max_streams_transfers_at_once(self) -> None:
        for request_id in (1, 2, 3):
            self.receive(wire.Store(A, f"{request_id:064x}", None, 1), request_id)
        self.assertEqual(len(self.handler.blobs), 2)
        [(f, busy)] = self.out.sent
        self.assertEqual(
            (f.request_id, busy), (3, wire.Error("busy", "at most 2 transfers at once"))
        )
        with self.assertRaises(wire.ProtocolError):
            self.receive(wire.Store(A, B, None, 1), 1)  # an id still in use

    def test_a_fetch_served_waits_while_the_link_is_paused(self) -> None:
        self.handler.source = source = Source(b"x" * 600_000)
        self.mux.paused = True
        self.receive(wire.Fetch(A, B), 4)
        self.assertEqual(self.out.messages(), [wire.FetchReply(600_000)])
        self.mux.writable()
        data = [m for m in self.out.messages() if isinstance(m, wire.Data)]
        self.assertEqual(b"".join(d.payload for d in data), b"x" * 600_000)
        self.assertTrue(data[-1].end and source.closed)

    def test_a_fetch_whose_blob_cannot_be_read_is_answered_with_an_error(self) -> None:
        self.handler.source = source = Source(b"x" * 3_000_000)
        self.mux.paused = True
        self.receive(wire.Fetch(A, B), 4)
        source.failing = OSError(5, "Input/output error")  # the disk fails mid-way
        self.mux.writable()
        *data, error = self.out.messages()[1:]
        self.assertEqual(error, wire.Error("io", "cannot read the blob"))
        self.assertTrue(data and all(isinstance(d, wire.Data) and not d.end for d in data))
        self.assertTrue(source.closed)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_a_fetch_asked_for_is_fed_to_its_sink_and_can_be_cancelled(self) -> None:
        sink = Sink()
        done = self.mux.fetch(wire.Fetch(A, B), sink)
        [(f, _)] = self.out.sent
        self.receive(wire.FetchReply(6), f.request_id, reply=True)
        self.receive(wire.Data(b"abc", end=False), f.request_id, reply=True)
        done.cancel()
        self.assertEqual(self.out.messages()[-1], wire.Abort("cancelled"))
        # What was in flight is dropped, and the stream's end clears it.
        self.receive(wire.Data(b"def", end=True), f.request_id, reply=True)
        self.assertEqual((sink.size, sink.received), (6, b"abc"))
        self.failureResultOf(done)

    def test_data_out_of_order_is_a_protocol_error(self) -> None:
        with self.assertRaises(wire.ProtocolError):
            self.receive(wire.Data(b"x", end=True), 42)
        self.mux.fetch(wire.Fetch(A, B), Sink())
        [(f, _)] = self.out.sent
        with self.assertRaises(wire.ProtocolError):
            self.receive(wire.Data(b"x", end=False), f.request_id, reply=True)

    def test_closing_fails_what_is_in_flight(self) -> None:
        pending = self.mux.request(wire.Digest(A))
        self.receive(wire.Store(A, B, None, 1), 3)
        waiting = self.mux.when_writable()
        self.mux.paused = True
        paused = self.mux.when_writable()
        self.mux.close("gone")
        self.failureResultOf(pending, SessionClosed)
        self.failureResultOf(paused, SessionClosed)
        self.successResultOf(waiting)
        self.assertEqual(self.handler.blobs[0].aborted, "connection lost")
        # Nothing is sent once closed, and a new request fails at once.
        self.failureResultOf(self.mux.request(wire.Digest(A)), SessionClosed)
        self.assertEqual(len(self.out.sent), 1)
