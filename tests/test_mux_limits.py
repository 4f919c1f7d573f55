"""The serving side's limits of a session's multiplexer: frames in, frames out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.mux import MAX_WAITING, AnswerRate, Multiplexer
from dfs_twisted.ratelimit import RateLimit

from .fakes import A, Handler, Source, Wire

pytestmark = pytest.mark.unit


class _Sources(Handler):
    """Serves a fresh blob of 600 kB to every FETCH, keeping each to look at."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[Source] = []

    def open_fetch(self, session: Any, request: wire.Fetch) -> Deferred[Any]:
        source = Source(b"x" * 600_000)
        self.served.append(source)
        return succeed(source)


class ServingLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = Wire()
        self.handler = _Sources()
        self.mux = Multiplexer(object(), self.handler, self.out, max_streams=2)  # type: ignore[arg-type]
        self.mux.paused = True  # the link is full: fetches being served stay open

    def receive(self, message: wire.Message, request_id: int) -> None:
        for f in wire.FrameDecoder().feed(wire.encode(message, request_id)):
            self.mux.received(f, wire.decode(f))

    def replies(self) -> dict[int, list[wire.Message]]:
        by_id: dict[int, list[wire.Message]] = {}
        for f, m in self.out.sent:
            by_id.setdefault(f.request_id, []).append(m)
        return by_id

    def test_at_most_max_streams_fetches_are_served_at_once(self) -> None:
        for request_id in (1, 2, 3):
            self.receive(wire.Fetch(A, f"{request_id:064x}"), request_id)
        self.assertEqual(len(self.handler.served), 2)
        self.assertEqual(
            self.replies(),
            {
                1: [wire.FetchReply(600_000)],
                2: [wire.FetchReply(600_000)],
                3: [wire.Error("busy", "at most 2 transfers at once")],
            },
        )

    def test_a_fetch_the_peer_aborts_is_closed_and_frees_its_place(self) -> None:
        self.receive(wire.Fetch(A, f"{1:064x}"), 1)
        self.receive(wire.Fetch(A, f"{2:064x}"), 2)
        first, second = self.handler.served
        self.receive(wire.Abort("cancelled"), 1)
        self.assertTrue(first.closed)
        self.assertFalse(second.closed)
        self.assertEqual(self.replies()[1][-1], wire.Error("aborted", "fetch aborted"))
        # Its place is free: a new fetch is served, not refused as busy.
        self.receive(wire.Fetch(A, f"{3:064x}"), 3)
        self.assertEqual(self.replies()[3], [wire.FetchReply(600_000)])
        # Once the link takes data again, only the fetches still open are sent.
        self.mux.writable()
        data = {f.request_id for f, m in self.out.sent if isinstance(m, wire.Data) and m.payload}
        self.assertEqual(data, {2, 3})


class OpeningTests(SynchronousTestCase):
    """A FETCH whose blob is still being opened (its header read on a disk thread)."""

    def setUp(self) -> None:
        self.out = Wire()
        self.handler = Handler()
        self.opening: Deferred[Any] = Deferred()
        self.handler.open_fetch = lambda session, request: self.opening  # type: ignore[method-assign]
        self.mux = Multiplexer(object(), self.handler, self.out, max_streams=1)  # type: ignore[arg-type]

    def receive(self, message: wire.Message, request_id: int) -> None:
        for f in wire.FrameDecoder().feed(wire.encode(message, request_id)):
            self.mux.received(f, wire.decode(f))

    def test_it_holds_its_place_and_is_closed_if_aborted_meanwhile(self) -> None:
        self.receive(wire.Fetch(A, f"{1:064x}"), 1)
        self.receive(wire.Fetch(A, f"{2:064x}"), 2)
        self.receive(wire.Abort("cancelled"), 1)
        source = Source(b"x" * 10)
        self.opening.callback(source)
        self.assertTrue(source.closed)
        self.assertEqual(
            self.out.messages(),
            [
                wire.Error("busy", "at most 1 transfers at once"),
                wire.Error("aborted", "fetch aborted"),
            ],
        )

    def test_a_blob_that_cannot_be_opened_is_answered_with_an_error(self) -> None:
        self.receive(wire.Fetch(A, f"{1:064x}"), 1)
        self.opening.errback(OSError(5, "Input/output error"))
        self.assertEqual(self.out.messages(), [wire.Error("io", "cannot read the blob")])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.mux.paused = True
        self.handler.open_fetch = lambda session, request: succeed(Source(b"x"))  # type: ignore[method-assign]
        self.receive(wire.Fetch(A, f"{2:064x}"), 2)  # its place is free again
        self.assertEqual(self.out.messages()[-1], wire.FetchReply(1))


class _Reader:
    """The session side the multiplexer holds the reading of."""

    def __init__(self) -> None:
        self.info = SimpleNamespace(node_id=A)
        self.holds: set[object] = set()

    def hold_reading(self, holder: object) -> None:
        self.holds.add(holder)

    def release_reading(self, holder: object) -> None:
        self.holds.discard(holder)


class AnswerTests(SynchronousTestCase):
    """A peer's control requests: answered in order, as fast as the link and the rate
    allow; a peer asking far ahead of its answers is no longer read."""

    def setUp(self) -> None:
        self.out = Wire()
        self.session = _Reader()
        self.clock = task.Clock()
        self.limit = RateLimit(10, 3, self.clock.seconds)
        self.mux = self.connect()

    def connect(self) -> Multiplexer:
        return Multiplexer(
            self.session,  # type: ignore[arg-type]
            Handler(),
            self.out,
            max_streams=2,
            rate=AnswerRate(self.clock, self.limit),
        )

    def receive(self, message: wire.Message, request_id: int) -> None:
        for f in wire.FrameDecoder().feed(wire.encode(message, request_id)):
            self.mux.received(f, wire.decode(f))

    def answered(self) -> list[tuple[int, wire.Message]]:
        return [(f.request_id, m) for f, m in self.out.sent]

    def test_requests_wait_while_the_link_is_full_and_go_in_order(self) -> None:
        self.mux.paused = True
        self.receive(wire.Digest(A), 1)
        self.receive(wire.Ping(), 2)
        self.receive(wire.Digest(A), 3)
        self.assertEqual(self.answered(), [])
        self.mux.writable()
        reply = wire.DigestReply(A, 3)
        self.assertEqual(self.answered(), [(1, reply), (2, wire.Ack()), (3, reply)])

    def test_answers_follow_the_rate(self) -> None:
        for request_id in range(1, 6):
            self.receive(wire.Ping(), request_id)
        self.assertEqual([i for i, _ in self.answered()], [1, 2, 3])  # the burst
        self.clock.advance(0.1)
        self.assertEqual([i for i, _ in self.answered()], [1, 2, 3, 4])
        self.clock.advance(0.1)
        self.assertEqual([i for i, _ in self.answered()], [1, 2, 3, 4, 5])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.receive(wire.Ping(), 6)
        self.mux.close("gone")  # what waits is dropped, and so is the wake-up
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.answered()), 5)

    def test_a_peer_that_connects_again_starts_where_it_left_off(self) -> None:
        for request_id in range(1, 4):
            self.receive(wire.Ping(), request_id)  # the burst, used up
        self.mux.close("gone")
        self.mux = self.connect()  # the same peer, a new session: no fresh burst
        self.receive(wire.Ping(), 4)
        self.assertEqual([i for i, _ in self.answered()], [1, 2, 3])
        self.clock.advance(0.1)
        self.assertEqual([i for i, _ in self.answered()], [1, 2, 3, 4])

    def test_a_peer_asking_far_ahead_of_its_answers_is_no_longer_read(self) -> None:
        self.mux.paused = True  # it reads none of them
        for request_id in range(1, MAX_WAITING):
            self.receive(wire.Digest(A), request_id)
        self.assertEqual(self.session.holds, set())
        self.receive(wire.Digest(A), MAX_WAITING)
        self.assertEqual(self.session.holds, {self.mux})
        self.mux.writable()  # it reads again: answers at the rate, reading when few wait
        for _ in range(100):
            self.clock.advance(0.1)
        self.assertEqual(len(self.answered()), MAX_WAITING)
        self.assertEqual(self.session.holds, set())


class RateLimitTests(SynchronousTestCase):
    def test_peers_gone_quiet_are_forgotten(self) -> None:
        clock = task.Clock()
        limit = RateLimit(10, 2, clock.seconds)
        for i in range(20_000):  # made-up ids, each drained once: full 0.2 s later
            clock.advance(0.001)
            limit.take(f"{i}")
            limit.take(f"{i}")
        self.assertLessEqual(len(limit._buckets), 4097)

    def test_the_rate_holds_however_many_peers_were_seen(self) -> None:
        clock = task.Clock()
        limit = RateLimit(10, 2, clock.seconds)
        for i in range(5000):  # more peers than are kept, each drained
            limit.take(f"{i}")
            limit.take(f"{i}")
        self.assertTrue(limit.take("p") and limit.take("p"))
        self.assertFalse(limit.take("p"))
