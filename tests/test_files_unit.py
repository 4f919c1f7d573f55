"""Put, serve, sync and recover between nodes linked in memory (tests/loopback.py).

The same file logic and multiplexer as a running node, without TLS, sockets or
threads: each step happens synchronously, so these tests read as the protocol does.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.crypto import CryptoError, Decryptor
from dfs_twisted.diskqueue import DiskQueue, QueuedRead
from dfs_twisted.files.delete import Remover
from dfs_twisted.files.get import _Flow, _LocalSource
from dfs_twisted.files.owner import Owner
from dfs_twisted.files.put import Upload
from dfs_twisted.files.serve import IncomingReplica
from dfs_twisted.files.sync import RELAY_HOLD_BACK
from dfs_twisted.session import PeerSession
from dfs_twisted.store import BlobKey
from tests.loopback import MemoryNode, link, outcome, settled

pytestmark = pytest.mark.unit

DATA = os.urandom(3 * (1 << 20) + 123)  # more than one chunk, the last one short


class LoopbackCase(SynchronousTestCase):
    def node(
        self, org: str, *, owner: Owner | None = None, quota: int = 1 << 30, relay: bool = True
    ) -> MemoryNode:
        node = MemoryNode(Path(self.mktemp()), org, owner=owner, quota=quota, relay=relay)
        self.addCleanup(node.close)
        return node

    def stored(self, node: MemoryNode, key: BlobKey) -> bytes | None:
        f = node.holdings.open(key)
        if f is None:
            return None
        with f:
            return f.read()

    def plaintext(self, owner: MemoryNode, blob: bytes) -> bytes:
        dec = Decryptor(owner.owner.key)
        body = dec.feed(blob)
        last, _record = dec.finish()
        return body + last


class PutTests(LoopbackCase):
    def test_put_stores_here_and_on_every_linked_peer(self) -> None:
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        link(a, b)
        link(a, c)
        result = settled(a.put("report.pdf", DATA))
        self.assertEqual(result.replicas, 3)
        self.assertEqual([p.org for p in result.peers if p.ok], ["b", "c"])
        key = BlobKey(a.node_id, result.blob)
        mine = self.stored(a, key)
        assert mine is not None
        self.assertEqual(self.stored(b, key), mine)
        self.assertEqual(self.stored(c, key), mine)
        self.assertEqual(self.plaintext(a, mine), DATA)
        # The holders hold ciphertext only, and know who sent it.
        self.assertNotIn(DATA[:64], mine)
        entry = b.holdings.held(key)
        assert entry is not None
        self.assertEqual((entry.version, entry.sender), (result_version(a, key), a.node_id))

    def test_a_peer_over_its_quota_is_reported_and_keeps_nothing(self) -> None:
        a, b = self.node("a"), self.node("b", quota=1 << 20)
        link(a, b)
        result = settled(a.put("big", DATA))
        self.assertEqual(result.replicas, 1)
        [outcome] = result.peers
        self.assertFalse(outcome.ok)
        self.assertIn("quota", outcome.error or "")
        key = BlobKey(a.node_id, result.blob)
        self.assertIsNone(b.holdings.held(key))
        self.assertEqual(list(b.holdings.store.root.rglob(result.blob + "*")), [])
        self.assertIsNotNone(self.stored(a, key))

    def test_a_peer_that_goes_away_mid_put_fails_only_that_peer(self) -> None:
        a, b, c = self.node("a"), self.node("b"), self.node("c")
        at_a_b, _ = link(a, b)
        link(a, c)
        upload = Upload(
            a.owner,
            a.holdings,
            a.ledger,
            a.auditor,
            a.live(),
            "x",
            len(DATA),
            None,
            lambda _: None,
            a.placement,
        )
        upload.write(DATA[: 1 << 20])
        at_a_b.close("cable cut")
        upload.write(DATA[1 << 20 :])
        result = settled(upload.finish())
        self.assertEqual([(p.org, p.ok) for p in result.peers], [("b", False), ("c", True)])
        key = BlobKey(a.node_id, result.blob)
        self.assertIsNone(b.holdings.held(key))
        self.assertEqual(self.plaintext(a, self.stored(c, key) or b""), DATA)


def result_version(node: MemoryNode, key: BlobKey) -> int:
    entry = node.holdings.held(key)
    assert entry is not None
    return entry.version


class ServeTests(LoopbackCase):
    def test_an_altered_chunk_is_refused_and_nothing_is_kept(self) -> None:
        a, b = self.node("a"), self.node("b")
        result = settled(a.put("x", DATA))
        key = BlobKey(a.node_id, result.blob)
        blob = bytearray(self.stored(a, key) or b"")
        blob[len(blob) // 2] ^= 1
        at_a, _ = link(a, b)
        stream = at_a.store(wire.Store(key.owner, key.blob, len(blob), result_version(a, key)))
        stream.write(bytes(blob))
        failure = outcome(stream.finish())
        self.assertIn(
            "bad blob: chunk 1: the owner's signature does not verify", str(failure.value)
        )
        self.assertIsNone(b.holdings.held(key))
        self.assertEqual(list(b.holdings.store.root.rglob(key.blob + "*")), [])

    def test_nobody_but_the_owner_writes_into_its_namespace_on_its_node(self) -> None:
        a, b = self.node("a"), self.node("b")
        result = settled(a.put("x", DATA))
        key = BlobKey(a.node_id, result.blob)
        blob = self.stored(a, key) or b""
        _, at_b = link(a, b)
        # b replays a's own real blob back to a, under a's id: a is the owner.
        stream = at_b.store(wire.Store(key.owner, key.blob, len(blob), result_version(a, key)))
        stream.write(blob)
        failure = outcome(stream.finish())
        self.assertIn("forbidden", str(failure.value))

    def test_listing_carries_the_record_that_proves_each_version(self) -> None:
        a, b = self.node("a"), self.node("b")
        at_a, _ = link(a, b)
        result = settled(a.put("x", DATA))
        reply = settled(at_a.request(wire.List(a.node_id, None)))
        assert isinstance(reply, wire.ListReply)
        [entry] = reply.entries
        key = BlobKey(a.node_id, result.blob)
        held = a.holdings.held(key)
        assert held is not None
        self.assertEqual((entry.blob, entry.version), (result.blob, held.version))
        self.assertEqual(bytes.fromhex(entry.proof), a.holdings.proof(key, held))
        self.assertTrue(entry.proof)


class SyncTests(LoopbackCase):
    def test_catch_up_sends_what_the_peer_lacks_then_nothing(self) -> None:
        a, b = self.node("a"), self.node("b")
        first = settled(a.put("one", DATA))
        at_a, _ = link(a, b)
        second = settled(a.put("two", b"small"))
        self.assertEqual(settled(a.sync.catch_up(at_a)), 1)  # "two" is there already
        for blob in (first.blob, second.blob):
            self.assertIsNotNone(b.holdings.held(BlobKey(a.node_id, blob)))
        self.assertEqual(settled(a.sync.catch_up(at_a)), 0)

    def test_a_deletion_reaches_a_peer_that_was_away(self) -> None:
        a, b = self.node("a"), self.node("b")
        at_a, _ = link(a, b)
        result = settled(a.put("gone", DATA))
        at_a.close("away")
        a.sessions.clear()
        settled(Remover(a.owner, a.holdings, a.ledger, a.live, a.placement).delete("gone"))
        key = BlobKey(a.node_id, result.blob)
        held = b.holdings.held(key)
        assert held is not None and not held.deleted
        at_a, _ = link(a, b)
        self.assertEqual(settled(a.sync.catch_up(at_a)), 1)
        held = b.holdings.held(key)
        assert held is not None
        self.assertTrue(held.deleted)
        self.assertIsNone(self.stored(b, key))

    def test_relay_passes_a_blob_on_and_no_relay_does_not(self) -> None:
        for relay in (True, False):
            a, b, c = self.node("a"), self.node("b", relay=relay), self.node("c")
            link(a, b)
            result = settled(a.put("x", DATA))
            at_b, _ = link(b, c)
            sent = settled(b.sync.catch_up(at_b))
            held = c.holdings.held(BlobKey(a.node_id, result.blob))
            self.assertEqual((sent, held is not None), (1, True) if relay else (0, False))

    def test_relays_to_a_peer_that_gets_the_owners_changes_itself_are_held_back(self) -> None:
        # a reaches b and c itself; d only through b.
        a, b, c, d = self.node("a"), self.node("b"), self.node("c"), self.node("d")
        link(a, b)
        link(a, c)
        link(b, c)
        link(b, d)
        relayed: dict[str, list[str]] = {"c": [], "d": []}
        count_stores(c, b, relayed["c"])
        count_stores(d, b, relayed["d"])
        blobs = [settled(a.put("one", b"1")).blob]
        # c had it (or was receiving it) from a: b holds back a's next changes for c.
        self.assertEqual(relayed, {"c": blobs, "d": blobs})
        blobs.append(settled(a.put("two", b"2")).blob)
        self.assertEqual(relayed, {"c": blobs[:1], "d": blobs})
        b.clock.advance(RELAY_HOLD_BACK)
        blobs.append(settled(a.put("three", b"3")).blob)
        self.assertEqual(relayed, {"c": [blobs[0], blobs[2]], "d": blobs})
        for blob in blobs:
            self.assertIsNotNone(d.holdings.held(BlobKey(a.node_id, blob)))


def count_stores(node: MemoryNode, sender: MemoryNode, blobs: list[str]) -> None:
    """Append to ``blobs`` the blob of each STORE ``node`` gets from ``sender``."""
    open_store = node.server.open_store

    def counting(session: PeerSession, request: wire.Store) -> IncomingReplica:
        if session.info.node_id == sender.node_id:
            blobs.append(request.blob)
        return open_store(session, request)

    node.server.open_store = counting  # type: ignore[method-assign]


class RecoverTests(LoopbackCase):
    def test_a_node_that_lost_everything_gets_it_back(self) -> None:
        a, b = self.node("a"), self.node("b")
        link(a, b)
        result = settled(a.put("keep.txt", DATA))
        fresh = self.node("a", owner=a.owner)  # same keys, empty store and ledger
        link(fresh, b)
        restored, failed = settled(fresh.recovery.recover())
        self.assertEqual((restored, failed), (["keep.txt"], []))
        key = BlobKey(a.node_id, result.blob)
        self.assertEqual(self.plaintext(fresh, self.stored(fresh, key) or b""), DATA)

    def test_claims_without_the_owners_proof_are_ignored(self) -> None:
        a, liar, honest = self.node("a"), self.node("b"), self.node("c")
        link(a, liar)
        link(a, honest)
        result = settled(a.put("keep.txt", DATA))
        key = BlobKey(a.node_id, result.blob)
        real = a.holdings.held(key)
        assert real is not None
        truthful = liar.server.answer
        claims = [
            # A deletion at the highest version, with no tombstone to back it.
            wire.ListEntry(key.blob, 2**64 - 1, True, ""),
            # A newer version, "proven" by the real version's record replayed.
            wire.ListEntry(key.blob, real.version + 1, False, a.holdings.proof(key, real).hex()),
        ]
        for claim in claims:

            def lying(
                session: PeerSession, request: wire.ControlRequest, claim: wire.ListEntry = claim
            ) -> Deferred[wire.Message]:
                if isinstance(request, wire.List):
                    return succeed(wire.ListReply((claim,), False))
                return truthful(session, request)

            liar.server.answer = lying  # type: ignore[method-assign]
            fresh = self.node("a", owner=a.owner)  # same keys, empty store and ledger
            link(fresh, liar)
            link(fresh, honest)
            restored, failed = settled(fresh.recovery.recover())
            # The proven version, from the honest holder: the claim changed nothing.
            self.assertEqual((restored, failed), (["keep.txt"], []), claim)
            self.assertEqual(fresh.ledger.newest, real.version)
            self.assertEqual(self.plaintext(fresh, self.stored(fresh, key) or b""), DATA)
            # Nothing was signed because a peer said so: every holder keeps the file.
            for node in (liar, honest):
                held = node.holdings.held(key)
                assert held is not None
                self.assertEqual((held.version, held.deleted), (real.version, False))


class _HeldReads(DiskQueue):
    """Reads that finish only when the test says so, in order."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def read(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, f, args))
        return d

    def finish_one(self) -> None:
        d, f, args = self.pending.pop(0)
        d.callback(f(*args))


class LocalReadTests(SynchronousTestCase):
    def test_a_failed_chunk_ends_the_read_only_once_the_next_read_is_done(self) -> None:
        # The caller reads the file again (a repair) or closes it right after: a
        # read still running on a disk thread would race with that.
        disk = _HeldReads()
        header: Any = SimpleNamespace(raw=b"H" * 10, span=4)
        source = _LocalSource(io.BytesIO(b"H" * 10 + b"aaaabbbbcccc"), header, disk)
        fed: list[bytes] = []

        def feed(data: bytes | memoryview) -> None:
            fed.append(bytes(data))
            if len(fed) == 2:
                raise CryptoError("chunk 0 is damaged")

        done = Deferred.fromCoroutine(source.read(0, feed, _Flow()))
        disk.finish_one()  # the header, fed; chunk 0 is being read
        disk.finish_one()  # chunk 0 fails its check; chunk 1 is being read
        self.assertEqual(fed, [b"H" * 10, b"aaaa"])
        self.assertNoResult(done)
        disk.finish_one()
        self.failureResultOf(done, CryptoError)
        self.assertEqual(disk.pending, [])

    def test_every_chunk_is_fed_in_order(self) -> None:
        disk = _HeldReads()
        header: Any = SimpleNamespace(raw=b"H" * 10, span=4)
        source = _LocalSource(io.BytesIO(b"H" * 10 + b"aaaabbbbcc"), header, disk)
        fed: list[bytes] = []
        done = Deferred.fromCoroutine(
            source.read(14, lambda data: fed.append(bytes(data)), _Flow())
        )
        while disk.pending:
            disk.finish_one()
        self.successResultOf(done)
        self.assertEqual(fed, [b"bbbb", b"cc"])


class _File(io.BytesIO):
    """A blob file that notes the reads it was asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, n: int | None = -1, /) -> bytes:
        self.reads.append(-1 if n is None else n)
        return super().read(n)


class ServedReadTests(SynchronousTestCase):
    """A blob sent to a peer, read on the disk threads (diskqueue.QueuedRead)."""

    def first_piece_read(self) -> tuple[_HeldReads, _File, QueuedRead]:
        """A 10-byte blob read 4 bytes at a time, its first piece read."""
        disk = _HeldReads()
        f = _File(b"aaaabbbbcc")
        source = disk.reader(f, 10)
        first = source.read(4)
        disk.finish_one()
        self.assertEqual(self.successResultOf(first), b"aaaa")
        return disk, f, source

    def test_the_next_piece_is_read_while_one_goes_out(self) -> None:
        disk, f, source = self.first_piece_read()
        self.assertEqual(len(disk.pending), 1, "no read ahead")  # b"bbbb", being read
        second = source.read(4)
        disk.finish_one()
        self.assertEqual(self.successResultOf(second), b"bbbb")
        third = source.read(4)
        disk.finish_one()
        self.assertEqual(self.successResultOf(third), b"cc")
        self.assertEqual(disk.pending, [])  # a short piece is the end: nothing read after it
        self.assertEqual(f.reads, [4, 4, 4])
        source.close()
        self.assertTrue(f.closed)

    def test_a_file_closed_while_a_thread_reads_it_is_closed_after_that_read(self) -> None:
        disk, f, source = self.first_piece_read()
        source.close()  # the FETCH aborted while the next piece is read ahead
        self.assertFalse(f.closed, "closed under a running read")
        disk.finish_one()
        self.assertTrue(f.closed)
        self.failureResultOf(source.read(4), ValueError)
        self.assertEqual(disk.pending, [])
