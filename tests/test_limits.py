"""Resource limits: stalls, handshake floods, concurrent transfers, quotas, the disk reserve."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.identity import PeerPins, ensure_private_dir
from dfs_twisted.launcher import NodeProcess, free_port
from dfs_twisted.protocol import PING_INTERVAL, IncomingBlob, Limits, PeerFactory, PeerProtocol
from dfs_twisted.session import PeerSession
from dfs_twisted.space import GiB, NoSpace, SpaceAccount, SpaceLimits, parse_size

from .fakes import FakeHandler, TLSStringTransport, identity, sent
from .strategies import encode_all, framed

FUZZ = settings(database=None, deadline=None, max_examples=150)

OWNER = "c" * 64


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.aborted: str | None = None

    def write(self, data: bytes | memoryview) -> None:
        self.data.append(bytes(data))

    def finish(self) -> Deferred[None]:
        return succeed(None)

    def abort(self, reason: str) -> None:
        self.aborted = reason


class AcceptingHandler(FakeHandler):
    def open_store(self, session: PeerSession, request: wire.Store) -> IncomingBlob:
        self.stores.append(request)
        return Sink()


class LiveProtocolCase(SynchronousTestCase):
    """A PeerProtocol of a real factory on an in-memory transport, with a fake clock."""

    LIMITS = Limits()

    def setUp(self) -> None:
        self.me, self.peer = identity(self), identity(self)
        root = Path(self.mktemp())
        ensure_private_dir(root)
        self.clock = task.Clock()
        self.handler = AcceptingHandler()
        self.factory = PeerFactory(
            self.me,
            PeerPins(root / "pins.json"),
            self.handler,
            "me",
            "127.0.0.1:3000",
            cast(IReactorTime, self.clock),
            limits=self.LIMITS,
        )

    def connect(self) -> tuple[PeerProtocol, TLSStringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = TLSStringTransport(self.peer)
        proto.makeConnection(transport)
        return proto, transport

    def connected(self) -> tuple[PeerProtocol, TLSStringTransport]:
        proto, transport = self.connect()
        proto.handshakeCompleted()
        hello = wire.Hello(wire.PROTOCOL_VERSION, self.peer.node_id, "peer", "127.0.0.1:4000")
        proto.dataReceived(wire.encode(hello, 0))
        self.assertIsNotNone(proto.peer)
        transport.clear()
        return proto, transport


@pytest.mark.unit
class ConnectionLimitTests(LiveProtocolCase):
    LIMITS = Limits(handshake_timeout=10, stall_timeout=60, max_streams=2, max_unauthenticated=3)

    def test_too_many_connections_awaiting_handshake_drop_the_oldest(self) -> None:
        waiting = [self.connect() for _ in range(3)]
        self.assertFalse(any(t.disconnecting for _, t in waiting))
        # A fourth: the oldest idle one goes, the newcomer may finish its handshake.
        _, newest = self.connect()
        self.assertTrue(waiting[0][1].disconnecting)
        self.assertFalse(newest.disconnecting)
        self.assertFalse(any(t.disconnecting for _, t in waiting[1:]))
        # One that completes its handshake no longer counts.
        proto, transport = waiting[1]
        proto.handshakeCompleted()
        hello = wire.Hello(wire.PROTOCOL_VERSION, self.peer.node_id, "peer", "127.0.0.1:4000")
        proto.dataReceived(wire.encode(hello, 0))
        self.connect()
        self.assertFalse(transport.disconnecting)
        self.assertFalse(waiting[2][1].disconnecting)

    def test_one_address_cannot_fill_the_table(self) -> None:
        self.factory.limits = Limits(max_unauthenticated=10, max_unauthenticated_per_host=2)
        first, second, third = (self.connect()[1] for _ in range(3))
        self.assertTrue(first.disconnecting)
        self.assertFalse(second.disconnecting or third.disconnecting)
        # Another address still gets in.
        proto = self.factory.buildProtocol(None)
        other = TLSStringTransport(self.peer, peer_address=IPv4Address("TCP", "127.0.0.2", 1))
        proto.makeConnection(other)
        self.assertFalse(other.disconnecting or second.disconnecting)

    def test_silent_connection_closed_at_handshake_timeout(self) -> None:
        _, transport = self.connect()
        self.clock.advance(self.LIMITS.handshake_timeout - 0.5)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_slow_frame_is_a_stall(self) -> None:
        proto, transport = self.connected()
        frame = wire.encode(wire.List(OWNER), 1)
        # One byte a little more often than the limit is still one frame taking forever.
        for byte in frame[:5]:
            proto.dataReceived(bytes([byte]))
            self.clock.advance(self.LIMITS.stall_timeout / 2)
        self.clock.advance(self.LIMITS.stall_timeout)
        self.assertTrue(transport.disconnecting)

    def test_transfer_that_stops_is_closed_and_dropped(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.encode(wire.Store(OWNER, "d" * 64, 100, 1), 1))
        proto.dataReceived(wire.encode(wire.Data(b"x" * 10, end=False), 1))
        self.clock.advance(self.LIMITS.stall_timeout - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def answer_pings(self, proto: PeerProtocol, transport: TLSStringTransport) -> None:
        for frame in wire.FrameDecoder().feed(transport.value()):
            if isinstance(wire.decode(frame), wire.Ping):
                proto.dataReceived(wire.encode(wire.Ack(), frame.request_id, reply=True))
        transport.clear()

    def test_idle_session_is_not_a_stall(self) -> None:
        proto, transport = self.connected()
        for _ in range(60):
            self.clock.advance(PING_INTERVAL)
            self.answer_pings(proto, transport)
        self.assertGreater(60 * PING_INTERVAL, self.LIMITS.stall_timeout * 5)
        self.assertFalse(transport.disconnecting)

    def test_peer_that_stops_answering_is_dropped(self) -> None:
        # A cut link: no FIN, no RST, just silence. The unanswered PING ends it.
        _, transport = self.connected()
        while self.clock.seconds() + PING_INTERVAL < self.LIMITS.ping_timeout:
            self.clock.advance(PING_INTERVAL)
            self.assertFalse(transport.disconnecting)
        # Within one more PING interval of the timeout.
        self.clock.advance(PING_INTERVAL)
        self.assertTrue(transport.disconnecting)

    def test_silence_while_we_hold_reading_is_ours(self) -> None:
        proto, transport = self.connected()
        proto.hold_reading(self)  # our disk is slow: we stopped reading the answers
        self.clock.advance(self.LIMITS.ping_timeout * 4)
        self.assertFalse(transport.disconnecting)

    def test_paused_reading_is_not_the_peers_fault(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.encode(wire.Store(OWNER, "d" * 64, None, 1), 1))
        proto.hold_reading(self)  # our disk is slow
        self.clock.advance(self.LIMITS.stall_timeout * 3)
        self.assertFalse(transport.disconnecting)
        proto.release_reading(self)
        self.clock.advance(self.LIMITS.stall_timeout * 2)
        self.assertTrue(transport.disconnecting)

    def test_concurrent_transfers_bounded(self) -> None:
        proto, transport = self.connected()
        for request_id in (1, 2, 3):
            proto.dataReceived(wire.encode(wire.Store(OWNER, "d" * 64, None, 1), request_id))
        self.assertEqual(len(self.handler.stores), 2)
        [busy] = sent(transport)
        assert isinstance(busy, wire.Error)
        self.assertEqual(busy.code, "busy")
        self.assertFalse(transport.disconnecting)
        # The refused stream's data in flight is dropped; the session goes on.
        proto.dataReceived(wire.encode(wire.Data(b"late", end=True), 3))
        self.assertFalse(transport.disconnecting)


@pytest.mark.unit
class StallTimeoutTests(LiveProtocolCase):
    """A stall timeout shorter than the ping's: the stall watchdog, not the ping, closes.

    (With the defaults an unanswered PING closes a silent link first, so the tests
    above would pass without the watchdog.)"""

    LIMITS = Limits(stall_timeout=5, ping_timeout=60)

    def test_transfer_that_stops_is_closed_at_the_stall_timeout(self) -> None:
        proto, transport = self.connected()
        proto.dataReceived(wire.encode(wire.Store(OWNER, "d" * 64, 100, 1), 1))
        proto.dataReceived(wire.encode(wire.Data(b"x" * 10, end=False), 1))
        self.clock.advance(4)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)


@pytest.mark.unit
class SpaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.held = {OWNER: 0}
        self.free = 100 * GiB

    def account(self, quota: int, reserve: int) -> SpaceAccount:
        return SpaceAccount(
            lambda owner: self.held.get(owner, 0), SpaceLimits(quota, reserve), lambda: self.free
        )

    def test_parse_size(self) -> None:
        self.assertEqual(parse_size("500M"), 500 << 20)
        self.assertEqual(parse_size("20G"), 20 << 30)
        self.assertEqual(parse_size("1.5k"), 1536)
        self.assertEqual(parse_size("7"), 7)
        self.assertEqual(parse_size("2GiB"), 2 << 30)
        for bad in ("", "G", "abc", "-1G", "1X"):
            self.assertRaises(ValueError, parse_size, bad)

    def test_quota_counts_what_is_held(self) -> None:
        self.held[OWNER] = 600
        account = self.account(quota=1000, reserve=0)
        account.check(OWNER, 400, None)
        with self.assertRaises(NoSpace) as caught:
            account.check(OWNER, 401, None)
        self.assertEqual(caught.exception.code, "quota")
        self.held[OWNER] = 0
        account.check(OWNER, 1000, None)
        # Another org has a quota of its own.
        self.account(quota=1000, reserve=0).check("e" * 64, 1000, None)

    def test_reserve_protects_free_disk(self) -> None:
        account = self.account(quota=100 * GiB, reserve=GiB)
        self.free = 2 * GiB
        account.check(OWNER, GiB, GiB)
        with self.assertRaises(NoSpace) as caught:
            account.check(OWNER, GiB + 1, GiB + 1)
        self.assertEqual(caught.exception.code, "disk_full")


@pytest.mark.processes
class QuotaProcessTests(SynchronousTestCase):
    """A real node with a small quota refuses a peer's replicas beyond it."""

    def test_quota_refusal_reported_to_the_owner(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="dfs-quota-"))
        self.addCleanup(shutil.rmtree, root, True)
        holder = NodeProcess(free_port(), root / "holder", extra=["--quota", "2M"])
        self.addCleanup(holder.stop)
        holder.start().wait_ready()
        owner = NodeProcess(free_port(), root / "owner", [holder.port])
        self.addCleanup(owner.stop)
        owner.start().wait_ready()
        owner.wait_peers(1)
        data = (root / "one.bin").resolve()
        data.write_bytes(b"q" * 1_500_000)
        first = owner.dfs("put", str(data), "--name", "one")
        self.assertIn("1 of 1", first.stdout.decode())
        for name, stdin in (("two", None), ("three", data.read_bytes())):
            args = ["put", "-" if stdin else str(data), "--name", name]
            result = owner.dfs(*args, input=stdin)
            self.assertIn("0 of 1", result.stdout.decode())
            self.assertIn("quota", result.stderr.decode())
        owner_id = owner.status()["node_id"]
        held = [p for p in (holder.data_dir / "store" / owner_id).rglob("*") if p.is_file()]
        self.assertEqual(len(held), 1)
        self.assertEqual(list((holder.data_dir / "store" / "tmp").iterdir()), [])
        self.assertIn("refused a replica", holder.log_path.read_text())
        # The owner's own copies are all there.
        self.assertEqual(len(owner.dfs("ls", "--json").stdout.decode().split('"name"')), 4)


@pytest.mark.unit
class LiveProtocolFuzzTests(LiveProtocolCase):
    """Random and mutated frame streams fed to a live, admitted PeerProtocol."""

    @FUZZ
    @given(st.lists(framed, max_size=8), st.data())
    def test_mutated_streams_close_or_serve_never_crash(
        self, items: list[tuple[wire.Message, int, bool]], data: st.DataObject
    ) -> None:
        raw = bytearray(encode_all(items))
        for _ in range(data.draw(st.integers(0, 4))):
            if raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        self.feed_and_check(bytes(raw), data.draw(st.lists(st.integers(0, len(raw)))))

    @FUZZ
    @given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=8))
    def test_random_bytes_close_or_serve_never_crash(self, raw: bytes, cuts: list[int]) -> None:
        self.feed_and_check(raw, cuts)

    def feed_and_check(self, raw: bytes, cuts: list[int]) -> None:
        self.handler = AcceptingHandler()
        self.factory.handler = self.handler
        proto, transport = self.connected()
        start = 0
        # Any exception escaping dataReceived would fail the test here.
        for cut in [*sorted(c for c in cuts if c <= len(raw)), len(raw)]:
            proto.dataReceived(raw[start:cut])
            start = cut
        # Whatever it answered is well-formed frames; it never buffers past a frame.
        wire.FrameDecoder().feed(transport.value())
        self.assertLessEqual(proto._decoder.buffered, wire.HEADER.size + wire.MAX_CONTROL_BODY)
        if transport.disconnecting:
            return
        if proto._decoder.buffered:
            # Left in the middle of a frame: the stall timer ends it.
            self.clock.advance(self.LIMITS.stall_timeout + 1)
            self.assertTrue(transport.disconnecting)
            return
        # Still open between frames: it must still answer a valid request.
        transport.clear()
        proto.dataReceived(wire.encode(wire.List(OWNER), 4242))
        self.assertTrue(transport.value() or transport.disconnecting)
