"""Real nodes in one process over loopback TLS: HELLO, replication, authorization, pins."""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from dfs_twisted import wire
from dfs_twisted.catalog import BLOCK, Entry
from dfs_twisted.crypto import Tombstone
from dfs_twisted.diskqueue import QueuedBlob
from dfs_twisted.files import FileNotFound, PutInProgress
from dfs_twisted.launcher import free_port
from dfs_twisted.node import NodeService
from dfs_twisted.protocol import OutgoingStream, RemoteError
from dfs_twisted.session import PeerClient, delete_message
from dfs_twisted.space import SpaceLimits
from dfs_twisted.store import BlobFile, BlobKey

from .fakes import Sink
from .inprocess import (
    NodeTestCase,
    blob_path,
    eventually,
    get,
    put,
    reactor,
)

pytestmark = pytest.mark.inprocess

# More than one encryption chunk and many DATA frames, still quick on loopback.
DATA = os.urandom(3 * 1024 * 1024 + 12345)


async def two_nodes(test: NodeTestCase) -> tuple[NodeService, NodeService]:
    a_port = free_port()
    a = test.make_node(a_port, org="alpha")
    b = test.make_node(peers=[a_port], org="beta")
    await test.connected(a, b)
    return a, b


class TwoNodeTests(NodeTestCase):
    async def two_nodes(self) -> tuple[NodeService, NodeService]:
        return await two_nodes(self)

    async def test_hello_exchange(self) -> None:
        a, b = await self.two_nodes()
        on_a, on_b = self.session(a, b), self.session(b, a)
        assert on_a.info is not None and on_b.info is not None
        self.assertEqual((on_a.info.node_id, on_a.info.org), (b.node_id, "beta"))
        self.assertEqual((on_b.info.node_id, on_b.info.org), (a.node_id, "alpha"))
        self.assertEqual(on_b.info.listen, f"127.0.0.1:{a.port}")
        # b dialled a: b pinned a's id under the address it dialled.
        self.assertEqual(b.factory.pins.get(f"127.0.0.1:{a.port}"), a.node_id)
        [row] = b.registry.status()
        self.assertEqual(row["state"], "connected")
        self.assertEqual(row["node_id"], a.node_id)
        self.assertEqual(row["direction"], "outgoing")
        [row] = a.registry.status()
        self.assertEqual((row["node_id"], row["direction"]), (b.node_id, "incoming"))
        # Both ends send small frames at once (no Nagle delay on a put's answers).
        for session in (on_a, on_b):
            tcp = session.transport.transport  # type: ignore[union-attr]
            self.assertTrue(tcp.getTcpNoDelay())

    async def test_put_reaches_peer_then_download_from_peer_then_delete(self) -> None:
        a, b = await self.two_nodes()
        blob, replicas = await put(a, "report.bin", DATA)
        self.assertEqual(replicas, 2)
        local, remote = blob_path(a, a.node_id, blob), blob_path(b, a.node_id, blob)
        self.assertTrue(remote.exists())
        self.assertEqual(remote.read_bytes(), local.read_bytes())
        # Ciphertext only: the plaintext is on neither disk.
        self.assertNotIn(DATA[:64], remote.read_bytes())
        self.assertNotIn(b"report.bin", remote.read_bytes())

        local.unlink()
        plain, source = await get(a, "report.bin")
        self.assertEqual(plain, DATA)
        self.assertEqual(source, "beta")
        # The fetched copy was verified and restored locally.
        self.assertEqual(local.read_bytes(), remote.read_bytes())
        plain, source = await get(a, "report.bin")
        self.assertEqual((plain, source), (DATA, "local"))

        here, outcomes = await a.files.delete("report.bin")
        self.assertTrue(here)
        self.assertEqual([(o.node_id, o.ok) for o in outcomes], [(b.node_id, True)])
        self.assertFalse(remote.exists())
        self.assertFalse(local.exists())
        with self.assertRaises(FileNotFound):
            await a.files.open_download("report.bin")

    async def test_empty_file_round_trip(self) -> None:
        _, b = await self.two_nodes()
        blob, replicas = await put(b, "empty", b"")
        self.assertEqual(replicas, 2)
        blob_path(b, b.node_id, blob).unlink()
        self.assertEqual(await get(b, "empty"), (b"", "alpha"))

    async def test_list_files_counts_replicas(self) -> None:
        a, b = await self.two_nodes()
        await put(a, "one", b"1")
        await put(a, "two", b"22")
        entries = await a.files.list_files()
        self.assertEqual(
            [(e.name, e.size, e.replicas) for e in entries], [("one", 1, 2), ("two", 2, 2)]
        )
        self.assertEqual(await b.files.list_files(), [])

    async def test_recover_after_losing_the_store(self) -> None:
        a, _ = await self.two_nodes()
        blob, _ = await put(a, "precious", DATA)
        blob_path(a, a.node_id, blob).unlink()
        recovered, errors = await a.files.recover()
        self.assertEqual((recovered, errors), (["precious"], []))
        self.assertEqual(await get(a, "precious"), (DATA, "local"))

    async def test_stopped_node_closes_its_sessions(self) -> None:
        a, b = await self.two_nodes()
        # a only accepted b's connection; stopping a must still end that session,
        # or a stopped node would go on storing and serving blobs for b.
        await a.stopService()
        await eventually(lambda: b.registry.live() == [], "b to see a go")
        # a's own side of the connection may close a moment after b saw the end.
        await eventually(lambda: a.registry.live() == [], "a to drop its session")
        [row] = b.registry.status()
        self.assertNotEqual(row["state"], "connected")

    async def test_a_replica_committing_while_its_node_stops_is_known_after_a_restart(
        self,
    ) -> None:
        # b's disk is slow: a replica is in b's commit when b is told to stop. The stop
        # waits for the commit and its index row; a commit that ended after the disk
        # threads would leave a file that neither the index nor the catalog kept at
        # the stop knows of (and its row's write would fail, unheard).
        a, b = await self.two_nodes()
        committing, disk_back = threading.Event(), threading.Event()

        def slow_fsync(fd: int) -> None:
            committing.set()
            disk_back.wait(10)
            os.fsync(fd)

        b.store._fsync = slow_fsync
        putting = Deferred.fromCoroutine(put(a, "late", DATA))
        await eventually(committing.is_set, "b to commit the replica")
        threading.Timer(0.3, disk_back.set).start()
        await b.stopService()
        blob, _ = await putting
        key = BlobKey(a.node_id, blob)
        self.assertTrue(blob_path(b, a.node_id, blob).exists())
        again = self.make_node(b.port, org="beta", data_dir=b.data_dir)
        await self.start(again)
        held = again.files.catalog.get(key)
        assert held is not None
        self.assertEqual(held.version, a.files.catalog.get(key).version)  # type: ignore[union-attr]

    async def test_a_slow_disk_under_a_fetch_or_an_audit_holds_that_and_nothing_else(
        self,
    ) -> None:
        # b's disk is slow to give the blob a FETCH and an AUDIT ask for (its header
        # too): the reads wait on b's disk threads, and b answers its peers meanwhile
        # (read on b's reactor, they would wait until the disk came back: here, until
        # the reads gave up).
        a, b = await self.two_nodes()
        blob, _ = await put(a, "served", DATA)
        version = a.files.catalog.get(BlobKey(a.node_id, blob)).version  # type: ignore[union-attr]
        disk_back = threading.Event()
        self.addCleanup(disk_back.set)
        waiting: list[int] = []  # a read that waited for the disk: 1, on whatever thread
        gave_up: list[bool] = []
        open_blob = b.files.holdings.open

        class SlowDisk:
            def __init__(self, f: BlobFile) -> None:
                self._f = f

            def read(self, n: int = -1) -> bytes:
                waiting.append(1)
                gave_up.append(not disk_back.wait(5))
                return self._f.read(n)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._f, name)

            def __enter__(self) -> SlowDisk:
                return self

            def __exit__(self, *exc: object) -> None:
                self._f.close()

        def slow_open(key: BlobKey) -> Any:
            f = open_blob(key)
            return None if f is None else SlowDisk(f)

        b.files.holdings.open = slow_open  # type: ignore[method-assign]
        sink = Sink()
        fetching = self.session(a, b).fetch(wire.Fetch(a.node_id, blob), sink)
        auditing = Deferred.fromCoroutine(
            a.files.auditor.audit(self.session(a, b), BlobKey(a.node_id, blob), version)
        )
        # Both wait at once: neither read waits behind the other on one thread.
        await eventually(lambda: len(waiting) == 2, "b to read for both")
        await PeerClient(self.session(a, b)).digest(a.node_id)
        self.assertFalse(disk_back.is_set())
        disk_back.set()
        await fetching
        self.assertEqual(sink.received, blob_path(b, a.node_id, blob).read_bytes())
        self.assertTrue(await auditing)
        self.assertNotIn(True, gave_up)

    async def test_reconnects_after_peer_restart(self) -> None:
        a, b = await self.two_nodes()
        blob, _ = await put(a, "kept", b"kept")
        await b.stopService()
        await eventually(lambda: a.registry.live() == [], "a to see b go")
        again = self.make_node(b.port, peers=[a.port], org="beta", data_dir=b.data_dir)
        self.assertEqual(again.node_id, b.node_id)
        await self.connected(a, again)
        self.assertTrue(blob_path(again, a.node_id, blob).exists())
        # b's pin of a survived the restart and still matches.
        self.assertEqual(again.factory.pins.get(f"127.0.0.1:{a.port}"), a.node_id)

    async def test_peer_that_starts_later_is_connected(self) -> None:
        a_port = free_port()
        b = self.make_node(peers=[a_port], org="beta")
        await self.start(b)
        await task.deferLater(reactor, 0.3, lambda: None)  # b has tried and failed
        self.assertEqual(b.registry.live(), [])
        [row] = b.registry.status()
        self.assertEqual(row["state"], "connecting")
        a = self.make_node(a_port, org="alpha")
        await self.connected(a, b)


class AuthorizationTests(NodeTestCase):
    async def refused(self, stream: OutgoingStream, data: bytes) -> str:
        stream.write(data)
        with self.assertRaises(RemoteError) as caught:
            await stream.finish()
        code: str = caught.exception.code
        return code

    async def test_peer_cannot_write_or_delete_another_orgs_blobs(self) -> None:
        a_port, b_port = free_port(), free_port()
        a = self.make_node(a_port, org="alpha")
        b = self.make_node(b_port, peers=[a_port], org="beta")
        c = self.make_node(peers=[a_port, b_port], org="gamma")
        await self.connected(a, b, c)
        blob, replicas = await put(a, "alpha's", DATA[:100_000])
        self.assertEqual(replicas, 3)
        on_c = blob_path(c, a.node_id, blob)
        before = on_c.read_bytes()
        version = a.files.catalog.newest(a.node_id)

        # b may relay a's blobs and deletions, but only as a signed them.
        b_to_c = self.session(b, c)
        forged = Tombstone.sign(b.identity.key, blob, version + 1)
        with self.assertRaises(RemoteError) as caught:
            await b_to_c.request(replace(delete_message(forged), owner=a.node_id))
        self.assertEqual(caught.exception.code, "bad_signature")
        self.assertEqual(on_c.read_bytes(), before)

        # Replaying a's own ciphertext: c has that version already.
        replay = b_to_c.store(wire.Store(a.node_id, blob, len(before), version))
        self.assertEqual(await self.refused(replay, before), "have")
        # ... or claiming it is newer: the signed header says otherwise.
        replay = b_to_c.store(wire.Store(a.node_id, blob, len(before), version + 1))
        self.assertEqual(await self.refused(replay, before), "bad_blob")
        garbage = b_to_c.store(wire.Store(a.node_id, blob, 5000, version + 1))
        self.assertEqual(await self.refused(garbage, os.urandom(5000)), "bad_blob")
        # Nobody but c writes c's own namespace.
        mine = b_to_c.store(wire.Store(c.node_id, blob, 5, version + 1))
        self.assertEqual(await self.refused(mine, b"xxxxx"), "forbidden")
        self.assertEqual(on_c.read_bytes(), before)

        # The session survives refusals, and b's own namespace still works on c.
        self.assertIn(b_to_c, b.registry.live())
        _, replicas = await put(b, "beta's", b"b")
        self.assertEqual(replicas, 3)
        self.assertTrue(c.store.exists(BlobKey(a.node_id, blob)))


class PinningTests(NodeTestCase):
    async def test_address_pinned_to_another_id_is_refused(self) -> None:
        a_port = free_port()
        a = self.make_node(a_port, org="alpha")
        impostor_pin = "f" * 64
        b = self.make_node(peers=[a_port], org="beta", pins={f"127.0.0.1:{a_port}": impostor_pin})
        await self.start(a, b)
        address = f"127.0.0.1:{a_port}"

        def refused() -> bool:
            [row] = b.registry.status()
            return row["last_error"] is not None

        await eventually(refused, "the pin refusal")
        [row] = b.registry.status()
        self.assertEqual(row["address"], address)
        self.assertNotEqual(row["state"], "connected")
        self.assertIsNone(row["node_id"])
        self.assertIn("pinned", row["last_error"])
        self.assertEqual(b.registry.live(), [])
        self.assertEqual(a.registry.live(), [])
        # The pin is kept: a changed key is never silently accepted.
        self.assertEqual(b.factory.pins.get(address), impostor_pin)


class TombstoneQuotaTests(NodeTestCase):
    async def test_tombstones_count_against_the_quota(self) -> None:
        # A peer may sign tombstones for ids it never stored: each costs a block here.
        holder = self.make_node(space=SpaceLimits(quota=16 * BLOCK, reserve=0))
        peer = self.make_node(peers=[holder.port])
        await self.connected(holder, peer)
        session = self.session(peer, holder)
        for i in range(16):
            tomb = Tombstone.sign(peer.identity.key, f"{i:064x}", 1)
            self.assertEqual(await session.request(delete_message(tomb)), wire.Ack())
        self.assertEqual(holder.files.catalog.held(peer.node_id), 16 * BLOCK)
        with self.assertRaises(RemoteError) as caught:
            await session.request(delete_message(Tombstone.sign(peer.identity.key, "f" * 64, 1)))
        self.assertEqual(caught.exception.code, "quota")
        self.assertIsNone(holder.files.holdings.tombstone(BlobKey(peer.node_id, "f" * 64)))
        # A tiny blob costs a block too: no room for one more.
        _, replicas = await put(peer, "tiny", b"x")
        self.assertEqual(replicas, 1)


class ConcurrentPutTests(NodeTestCase):
    async def test_one_put_of_a_name_at_a_time(self) -> None:
        a, _ = await two_nodes(self)
        first = a.files.begin_put("report", None, None)
        first.write(b"first")
        self.assertRaises(PutInProgress, a.files.begin_put, "report", None, None)
        other = a.files.begin_put("another name", None, None)  # other names go on
        other.abort("not needed")
        await first.finish()
        await put(a, "report", b"second")
        self.assertEqual(await get(a, "report"), (b"second", "local"))

    async def test_rm_during_a_put_wins(self) -> None:
        a, b = await two_nodes(self)
        await put(a, "short-lived", b"first version")
        upload = a.files.begin_put("short-lived", None, None)
        upload.write(DATA[:50_000])
        # The rm comes later than the second put began: its version is the newer one.
        await a.files.delete("short-lived")
        await upload.finish()
        with self.assertRaises(FileNotFound):
            await get(a, "short-lived")
        key = BlobKey(a.node_id, upload.blob)
        self.assertFalse(a.store.exists(key))
        await eventually(lambda: not b.store.exists(key), "b to hold no copy either")


class PublishOrderTests(NodeTestCase):
    """Commits of one key queued at once: the newest version is the one left."""

    def writer(self, node: NodeService, key: BlobKey, data: bytes) -> QueuedBlob:
        writer = node.disk.blob(node.store.begin(key))
        writer.write(data)
        return writer

    async def test_newest_version_wins_whatever_the_order(self) -> None:
        node = self.make_node()
        await node.ready
        key = BlobKey("e" * 64, "f" * 64)
        older, newer = self.writer(node, key, b"v1"), self.writer(node, key, b"v2")
        results = [
            node.files.holdings.publish(key, 1, older, b"", key.owner),
            node.files.holdings.publish(key, 2, newer, b"", key.owner),
        ]
        self.assertEqual([await Deferred.fromCoroutine(r) for r in results], [True, True])
        self.assertEqual((node.files.catalog.get(key), read(node, key)), (Entry(2, 2), b"v2"))
        # Newer queued first: the older one is turned away.
        newest, stale = self.writer(node, key, b"v4"), self.writer(node, key, b"v3")
        results = [
            node.files.holdings.publish(key, 4, newest, b"", key.owner),
            node.files.holdings.publish(key, 3, stale, b"", key.owner),
        ]
        self.assertEqual([await Deferred.fromCoroutine(r) for r in results], [True, False])
        self.assertEqual(read(node, key), b"v4")

    async def test_the_same_version_twice_answers_once_it_is_on_disk(self) -> None:
        # A relayed copy being committed and the owner's own copy of that version: the
        # second is told it is held only once the first is there for an audit to read.
        node = self.make_node()
        await node.ready
        holdings = node.files.holdings
        key = BlobKey("e" * 64, "f" * 64)
        first, second = self.writer(node, key, b"v7"), self.writer(node, key, b"v7")
        committing = Deferred.fromCoroutine(holdings.publish(key, 7, first, b"", "a" * 64))
        waiting = Deferred.fromCoroutine(holdings.publish(key, 7, second, b"", key.owner))
        self.assertNoResult(waiting)
        self.assertTrue(await committing)
        self.assertTrue(await waiting)
        self.assertEqual(read(node, key), b"v7")

    async def test_a_failure_after_the_commit_fails_the_publish_with_the_blob_held(self) -> None:
        # What follows a commit on its thread (a put's ledger row) failed: the put
        # fails, and the blob, durable by then, is what the catalog holds.
        node = self.make_node()
        await node.ready
        key = BlobKey(node.node_id, "f" * 64)

        def ledger_fails() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        holdings = node.files.holdings
        publishing = holdings.publish(
            key, 5, self.writer(node, key, b"v5"), b"", key.owner, ledger_fails
        )
        with self.assertRaises(sqlite3.OperationalError):
            await Deferred.fromCoroutine(publishing)
        self.assertEqual(read(node, key), b"v5")
        self.assertEqual(holdings.catalog.get(key), Entry(5, 2, sender=key.owner))

    async def test_deletion_landing_during_a_commit_wins(self) -> None:
        node = self.make_node()
        await node.ready
        owner = node.files.holdings
        key = BlobKey(node.node_id, "f" * 64)
        publishing = Deferred.fromCoroutine(
            owner.publish(key, 5, self.writer(node, key, b"v5"), b"", key.owner)
        )
        burying = Deferred.fromCoroutine(
            owner.bury(Tombstone.sign(node.identity.key, key.blob, 6), key.owner)
        )
        self.assertFalse(await publishing)
        self.assertTrue(await burying)
        self.assertFalse(node.store.exists(key))
        self.assertEqual(owner.catalog.get(key), Entry(6, 0, deleted=True))


def read(node: NodeService, key: BlobKey) -> bytes | None:
    f = node.store.open(key)
    if f is None:
        return None
    with f:
        return f.read()
