"""The serving side's limits of a session's multiplexer: frames in, frames out."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.mux import Multiplexer

from .fakes import A, Handler, Source, Wire

pytestmark = pytest.mark.unit


class _Sources(Handler):
    """Serves a fresh blob of 600 kB to every FETCH, keeping each to look at."""

    def __init__(self) -> None:
        super().__init__()
        self.served: list[Source] = []

    def open_fetch(self, session: Any, request: wire.Fetch) -> Source:
        source = Source(b"x" * 600_000)
        self.served.append(source)
        return source


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
