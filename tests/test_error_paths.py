"""What happens when things go wrong half-way: real nodes in this process, real TLS.

A client that leaves mid-transfer, a local disk write that fails during a put, a peer
that stays silent, cuts a blob short or refuses a deletion, a replica shorter than
announced, a fetch cancelled: each leaves no half-written file, no name stuck "in
progress", and no peer holding a version its owner did not commit.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred

from dfs_twisted import wire
from dfs_twisted.crypto import Encryptor
from dfs_twisted.files import DamagedBlob, FileNotFound
from dfs_twisted.files.fetch import FETCH_TIMEOUT, Fetcher
from dfs_twisted.files.get import _PeerSource
from dfs_twisted.launcher import free_port
from dfs_twisted.node import NodeService
from dfs_twisted.protocol import RequestRefused
from dfs_twisted.session import PeerClient, RemoteError, SessionClosed
from dfs_twisted.space import SpaceLimits
from dfs_twisted.store import BlobKey

from .inprocess import (
    NodeTestCase,
    RawHttp,
    blob_path,
    connect_raw,
    eventually,
    get,
    put,
    reactor,
)
from .liars import Liar

pytestmark = pytest.mark.inprocess

# Several 1 MiB chunks: a transfer that is still under way when something breaks.
BIG = os.urandom(5 * (1 << 20) + 4321)


def temp_files(node: NodeService) -> list[Path]:
    """Blobs being written (the store's temp files): none once nothing is under way."""
    return sorted((node.store.root / "tmp").glob("*"))


def open_fds_on(path: Path) -> int:
    """How many of this process's file descriptors point at ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                count += 1
        except OSError:
            continue
    return count


def sealed(node: NodeService, name: str, data: bytes) -> tuple[BlobKey, int, bytes]:
    """A new version of ``name`` as ``node`` would put it, stored nowhere yet."""
    files = node.files
    version = files.holdings.next_version(node.node_id, files.ledger.newest)
    encryptor = Encryptor(files.owner.key, files.owner.signer, name, version)
    blob = b"".join([encryptor.header, *encryptor.update(data), encryptor.finalize()])
    return BlobKey(node.node_id, encryptor.blob), version, blob


async def raw_http(node: NodeService) -> RawHttp:
    url = await node.ready
    return await connect_raw(int(url.rstrip("/").rsplit(":", 1)[1]), RawHttp())


def request_head(node: NodeService, method: str, name: str, length: int | None = None) -> bytes:
    head = f"{method} /v1/files/{name} HTTP/1.1\r\nHost: x\r\n"
    head += f"Authorization: Bearer {node.token}\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


class TwoNodes(NodeTestCase):
    async def pair(
        self, space: SpaceLimits | None = None, relay: bool = True
    ) -> tuple[NodeService, NodeService]:
        """The owner A, and B (dialling A) holding A's replicas."""
        a_port = free_port()
        a = self.make_node(a_port, org="a")
        b = self.make_node(peers=[a_port], org="b", space=space, relay=relay)
        await self.connected(a, b)
        return a, b


class ClientLeavesTests(TwoNodes):
    async def test_a_client_leaving_mid_put_leaves_nothing_in_progress(self) -> None:
        a, b = await self.pair()
        client = await raw_http(a)
        client.transport.write(request_head(a, "PUT", "leaving.bin", len(BIG)))
        client.transport.write(BIG[: 2 << 20])
        key = a.files.owner.key_for("leaving.bin")
        await eventually(lambda: key in a.files._uploads, "the upload to start")
        client.transport.abortConnection()
        await client.closed
        # The name is free again, and no half-written blob is left here or on B.
        await eventually(lambda: key not in a.files._uploads, "the upload to be dropped")
        await eventually(lambda: temp_files(a) == [], "a's temp file to go")
        await eventually(lambda: temp_files(b) == [], "b's temp file to go")
        self.assertIsNone(a.files.catalog.get(key))
        self.assertIsNone(b.files.catalog.get(key))
        self.assertEqual(a.files.ledger.get(key.blob), None)
        # A put of the same name now goes through (it is not "in progress").
        _, replicas = await put(a, "leaving.bin", b"second try")
        self.assertEqual(replicas, 2)
        self.assertEqual(await get(a, "leaving.bin"), (b"second try", "local"))

    async def test_a_client_leaving_mid_get_closes_the_local_copy(self) -> None:
        a, _ = await self.pair()
        await put(a, "read-half.bin", BIG)
        path = blob_path(a, a.node_id, a.files.owner.key_for("read-half.bin").blob)
        client = await raw_http(a)
        client.transport.pauseProducing()  # read nothing: the node's sending backs up
        client.transport.write(request_head(a, "GET", "read-half.bin"))
        await eventually(lambda: open_fds_on(path) == 1, "the download to open the blob")
        client.transport.abortConnection()
        await client.closed
        await eventually(lambda: open_fds_on(path) == 0, "the blob to be closed")
        # The node still serves the file whole.
        self.assertEqual(await get(a, "read-half.bin"), (BIG, "local"))

    async def test_a_client_leaving_mid_get_from_a_peer_leaves_a_whole_copy_or_none(
        self,
    ) -> None:
        a, b = await self.pair()
        blob, _ = await put(a, "from-b.bin", BIG)
        path = blob_path(a, a.node_id, blob)
        good = path.read_bytes()
        path.unlink()
        client = await raw_http(a)
        client.transport.pauseProducing()
        client.transport.write(request_head(a, "GET", "from-b.bin"))
        await eventually(lambda: b"200 OK" in client.received or len(temp_files(a)) > 0, "start")
        client.transport.abortConnection()
        await client.closed
        await eventually(lambda: temp_files(a) == [], "a's temp file to go")
        await eventually(lambda: not self.session(b, a)._mux._serving, "b to stop serving")
        # Whatever was restored here is the whole, verified blob.
        self.assertTrue(not path.exists() or path.read_bytes() == good)
        self.assertEqual(await get(a, "from-b.bin"), (BIG, "local" if path.exists() else "b"))


class LocalWriteFailureTests(TwoNodes):
    async def test_a_put_whose_local_write_fails_leaves_no_version_anywhere(self) -> None:
        a, b = await self.pair()
        upload = a.files.begin_put("doomed.bin", len(BIG), None)
        # The blob's folder cannot be made: a file is in the way (as root too).
        folder = blob_path(a, a.node_id, upload.blob).parent
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_bytes(b"in the way")
        upload.write(BIG)
        with self.assertRaises(OSError):
            await upload.finish()
        key = upload.key
        # No peer holds the version its owner failed to write; no temp file anywhere.
        await eventually(lambda: temp_files(b) == [], "b to drop its partial replica")
        self.assertIsNone(b.files.catalog.get(key))
        self.assertFalse(blob_path(b, a.node_id, upload.blob).exists())
        self.assertEqual(temp_files(a), [])
        self.assertIsNone(a.files.catalog.get(key))
        self.assertIsNone(a.files.ledger.get(key.blob))
        with self.assertRaises(FileNotFound):
            await a.files.open_download("doomed.bin")
        # Once the disk is fixed the name can be put again, everywhere.
        folder.unlink()
        _, replicas = await put(a, "doomed.bin", b"now it works")
        self.assertEqual(replicas, 2)


class MissingBlobListingTests(TwoNodes):
    async def test_a_file_whose_blob_went_missing_is_still_listed(self) -> None:
        a, _ = await self.pair()
        blob, _ = await put(a, "still-mine.txt", b"listed from the ledger")
        blob_path(a, a.node_id, blob).unlink()
        [entry] = await a.files.list_files()
        # Listed as held elsewhere (by B): `recover` or a get brings it back.
        self.assertEqual(
            (entry.name, entry.size, entry.here, entry.replicas),
            ("still-mine.txt", len(b"listed from the ledger"), False, 1),
        )
        recovered, errors = await a.files.recover()
        self.assertEqual((recovered, errors), (["still-mine.txt"], []))
        [entry] = await a.files.list_files()
        self.assertEqual((entry.name, entry.here, entry.replicas), ("still-mine.txt", True, 2))


class ReplicaTests(TwoNodes):
    async def test_a_replica_shorter_than_announced_is_refused(self) -> None:
        a, b = await self.pair()
        key, version, blob = sealed(a, "short.bin", BIG)
        stream = self.session(a, b).store(wire.Store(key.owner, key.blob, len(blob) + 1, version))
        stream.write(blob)
        with self.assertRaises(RemoteError) as caught:
            await stream.finish()
        self.assertEqual(
            (caught.exception.code, caught.exception.message),
            ("bad_request", "blob shorter than announced"),
        )
        self.assertIsNone(b.files.catalog.get(key))
        await eventually(lambda: temp_files(b) == [], "b to drop the partial replica")

    async def test_a_replica_longer_than_announced_ends_the_session(self) -> None:
        a, b = await self.pair()
        key, version, blob = sealed(a, "long.bin", BIG)
        stream = self.session(a, b).store(wire.Store(key.owner, key.blob, len(blob) - 1, version))
        stream.write(blob)
        # A peer that sends more than it announced breaks the protocol: B hangs up.
        with self.assertRaises(SessionClosed):
            await stream.finish()
        self.assertIsNone(b.files.catalog.get(key))
        await eventually(lambda: temp_files(b) == [], "b to drop the partial replica")

    async def test_a_relayed_replica_is_refused_with_no_relay(self) -> None:
        # C holds A's blob and passes it on to B; B runs with --no-relay.
        a_port, b_port = free_port(), free_port()
        a = self.make_node(a_port, org="a")
        b = self.make_node(b_port, org="b", relay=False)
        c = self.make_node(peers=[a_port, b_port], org="c")
        await self.connected(a, c)
        await self.connected(b, c)
        blob, replicas = await put(a, "relayed.bin", b"passed on")
        self.assertEqual(replicas, 2)
        key = BlobKey(a.node_id, blob)
        self.assertIsNotNone(c.files.catalog.get(key))
        entry = c.files.catalog.get(key)
        f = c.files.store.open(key)
        assert f is not None and entry is not None
        held = c.files.holdings.disk.reader(f, os.fstat(f.fileno()).st_size)
        self.addCleanup(held.close)
        with self.assertRaises(RemoteError) as caught:
            await PeerClient(self.session(c, b)).push(key, entry.version, held)
        self.assertEqual(caught.exception.code, "forbidden")
        self.assertIsNone(b.files.catalog.get(key))
        self.assertEqual(temp_files(b), [])
        # And C's own catch-up with B passes nothing of A's on either.
        self.assertEqual(await c.files.sync.catch_up(self.session(c, b)), 0)
        self.assertEqual(b.files.store.blobs(a.node_id), [])


class DeleteTests(TwoNodes):
    async def test_putting_a_deleted_name_again(self) -> None:
        a, b = await self.pair()
        blob, _ = await put(a, "again.txt", b"first")
        here, outcomes = await a.files.delete("again.txt")
        self.assertTrue(here and all(o.ok for o in outcomes))
        with self.assertRaises(FileNotFound):
            await a.files.open_download("again.txt")
        _, replicas = await put(a, "again.txt", b"second")
        self.assertEqual(replicas, 2)
        self.assertEqual(await get(a, "again.txt"), (b"second", "local"))
        self.assertEqual([e.name for e in await a.files.list_files()], ["again.txt"])
        key = BlobKey(a.node_id, blob)
        held_a, held_b = a.files.catalog.get(key), b.files.catalog.get(key)
        assert held_a is not None and held_b is not None
        self.assertFalse(held_b.deleted)
        self.assertEqual(held_b.version, held_a.version)

    async def test_a_delete_a_peer_refuses(self) -> None:
        # B takes at most one 4 KiB block from A: a tombstone of a blob it does not
        # hold would be a second one.
        a, _ = await self.pair(space=SpaceLimits(quota=4096, reserve=0))
        await put(a, "fits.txt", b"on b")
        _, replicas = await put(a, "only-here.txt", b"b has no room")
        self.assertEqual(replicas, 1)
        here, [outcome] = await a.files.delete("only-here.txt")
        self.assertTrue(here)
        self.assertFalse(outcome.ok)
        self.assertEqual(outcome.org, "b")
        assert outcome.error is not None
        self.assertTrue(outcome.error.startswith("quota: "), outcome.error)
        # Deleted here all the same, and the ledger says so.
        with self.assertRaises(FileNotFound):
            await a.files.open_download("only-here.txt")
        key = a.files.owner.key_for("only-here.txt")
        written = a.files.ledger.get(key.blob)
        self.assertTrue(written is not None and written.deleted)
        self.assertEqual([e.name for e in await a.files.list_files()], ["fits.txt"])


class FetchNetwork(NodeTestCase):
    async def network(self, data: bytes = BIG) -> tuple[NodeService, NodeService, Liar, BlobKey]:
        """V's file held by L (whose answers a test may change); V's copy gone."""
        l_port = free_port()
        liar_node = self.make_node(l_port, org="liar")
        victim = self.make_node(peers=[l_port], org="victim")
        await self.connected(victim, liar_node)
        blob, replicas = await put(victim, "fetched.bin", data)
        self.assertEqual(replicas, 2)
        key = BlobKey(victim.node_id, blob)
        self.good = blob_path(victim, victim.node_id, blob).read_bytes()
        blob_path(victim, victim.node_id, blob).unlink()
        victim.files.holdings.held(key)  # forgotten here
        return victim, liar_node, Liar(liar_node), key

    async def into_store(
        self, victim: NodeService, liar_node: NodeService, key: BlobKey, clock: Any = None
    ) -> Any:
        files = victim.files
        fetcher = Fetcher(files.holdings, victim.registry.live, clock or reactor)
        version = files.ledger.get(key.blob)
        assert version is not None
        return await fetcher.into_store(
            self.session(victim, liar_node), key, files.owner.key, version.version
        )


class FetchFailureTests(FetchNetwork):
    async def test_a_fetch_that_gets_no_answer_times_out(self) -> None:
        victim, liar_node, _, key = await self.network()
        clock: Any = task.Clock()
        silent_transport: Any = self.session(liar_node, victim).transport
        silent_transport.pauseProducing()  # L reads nothing, so never answers
        fetching = Deferred.fromCoroutine(self.into_store(victim, liar_node, key, clock))
        clock.advance(FETCH_TIMEOUT - 1)
        self.assertNoResult(fetching)
        clock.advance(1)
        failure = await self.assertFailure(fetching, TimeoutError)
        self.assertEqual(str(failure), f"no answer in {FETCH_TIMEOUT:.0f}s")
        silent_transport.resumeProducing()
        await eventually(lambda: temp_files(victim) == [], "v to drop its partial copy")
        self.assertIsNone(victim.files.catalog.get(key))

    async def test_a_read_from_a_peer_that_does_not_answer_times_out(self) -> None:
        victim, liar_node, _, key = await self.network()
        clock: Any = task.Clock()
        silent_transport: Any = self.session(liar_node, victim).transport
        silent_transport.pauseProducing()
        version = victim.files.ledger.get(key.blob)
        assert version is not None
        source = _PeerSource(self.session(victim, liar_node), key, version.version, clock)
        started = Deferred.fromCoroutine(source.start())
        clock.advance(FETCH_TIMEOUT)
        with self.assertRaises(TimeoutError) as caught:
            await started
        self.assertEqual(str(caught.exception), f"no answer in {FETCH_TIMEOUT:.0f}s")
        silent_transport.resumeProducing()

    async def test_a_fetch_that_ends_before_its_header(self) -> None:
        victim, liar_node, liar, key = await self.network()
        liar.forged[key.blob] = self.good[:40]
        with self.assertRaises(DamagedBlob) as caught:
            await self.into_store(victim, liar_node, key)
        self.assertEqual(str(caught.exception), "stream ended before a complete header")
        await eventually(lambda: temp_files(victim) == [], "v to drop its partial copy")
        self.assertIsNone(victim.files.catalog.get(key))

    async def test_a_fetch_that_arrives_short(self) -> None:
        victim, liar_node, liar, key = await self.network()
        good = self.good
        real_fetch = liar._fetch

        def announcing_more(session: Any, request: wire.Fetch) -> Any:
            def more(source: Any) -> Any:
                source.size += 1000  # announces more than it then sends
                return source

            return real_fetch(session, request).addCallback(more)

        liar._fetch = announcing_more
        with self.assertRaises(DamagedBlob) as caught:
            await self.into_store(victim, liar_node, key)
        self.assertEqual(
            str(caught.exception), f"peer sent {len(good)} of {len(good) + 1000} bytes"
        )
        await eventually(lambda: temp_files(victim) == [], "v to drop its partial copy")
        self.assertIsNone(victim.files.catalog.get(key))

    async def test_a_fetch_cancelled_is_aborted_on_the_serving_side(self) -> None:
        # The header opens with no key of V's: V cancels the fetch at once, and L,
        # told so with an ABORT, stops serving it and closes the blob.
        # Bigger than what the link buffers (4 MiB), so that L is still sending.
        victim, liar_node, _, key = await self.network(os.urandom(24 << 20))
        other = self.make_node(org="other")
        files = victim.files
        fetcher = Fetcher(files.holdings, victim.registry.live, reactor)
        served = blob_path(liar_node, victim.node_id, key.blob)
        liar_side = self.session(liar_node, victim)
        liar_side._mux.paused = True  # L sends no data until told: the fetch stays open
        sent_before = liar_side._mux.bytes_out
        fetching = Deferred.fromCoroutine(
            fetcher.into_store(self.session(victim, liar_node), key, other.org_key)
        )
        await eventually(lambda: open_fds_on(served) == 1, "L to open the blob")
        liar_side._mux.writable()
        with self.assertRaises(DamagedBlob):
            await fetching
        await eventually(lambda: not liar_side._mux._serving, "L to stop serving")
        await eventually(lambda: open_fds_on(served) == 0, "L to close the blob")
        # L stopped well before the end of the blob: the ABORT reached it.
        self.assertLess(liar_side._mux.bytes_out - sent_before, len(self.good) // 2)
        await eventually(lambda: temp_files(victim) == [], "v to drop its partial copy")


class RecoverErrorTests(FetchNetwork):
    async def test_recover_reports_a_holder_that_serves_a_damaged_copy(self) -> None:
        victim, _, liar, key = await self.network()
        liar.flip_at = 3 << 20
        recovered, errors = await victim.files.recover()
        self.assertEqual(recovered, [])
        [fetch_error, newest_error] = errors
        self.assertTrue(fetch_error.startswith(f"{key.blob[:16]} from liar: "), fetch_error)
        self.assertEqual(
            newest_error,
            "fetched.bin: its newest version is not on any connected peer "
            "(older versions are not restored in its place)",
        )
        self.assertIsNone(victim.files.catalog.get(key))
        await eventually(lambda: temp_files(victim) == [], "v to drop its partial copy")

    async def test_recover_reports_a_peer_that_will_not_list(self) -> None:
        victim, _, liar, key = await self.network()

        def refuse(reply: wire.ListReply) -> wire.ListReply:
            raise RequestRefused("slow_down", "not now")

        liar.forge_listing = refuse
        recovered, errors = await victim.files.recover()
        # The listing failed, and so did catching the peer up (it starts with one).
        self.assertEqual(recovered, [])
        self.assertEqual(errors[0], "liar: slow_down: not now")
        self.assertIn(
            "fetched.bin: its newest version is not on any connected peer "
            "(older versions are not restored in its place)",
            errors,
        )
        self.assertIsNone(victim.files.catalog.get(key))


class PushFailureTests(TwoNodes):
    async def test_a_push_a_peer_refuses_is_not_counted(self) -> None:
        a, b = await self.pair(space=SpaceLimits(quota=4096, reserve=0))
        await put(a, "fits.txt", b"on b")
        blob, replicas = await put(a, "no-room.txt", b"b is full")
        self.assertEqual(replicas, 1)
        key = BlobKey(a.node_id, blob)
        entry = a.files.catalog.get(key)
        assert entry is not None
        self.assertEqual(await a.files.sync.offer(self.session(a, b), key, entry), 0)
        self.assertIsNone(b.files.catalog.get(key))
        await eventually(lambda: temp_files(b) == [], "b to drop the refused replica")

    async def test_a_put_a_peer_refuses_says_which_and_why(self) -> None:
        a, b = await self.pair(space=SpaceLimits(quota=4096, reserve=0))
        await put(a, "fits.txt", b"on b")
        upload = a.files.begin_put("too-much.txt", 5000, None)
        upload.write(b"x" * 5000)
        result = await upload.finish()
        [outcome] = result.peers
        self.assertEqual((outcome.org, outcome.node_id, outcome.ok), ("b", b.node_id, False))
        assert outcome.error is not None
        self.assertTrue(outcome.error.startswith("quota: "), outcome.error)
        self.assertEqual(result.replicas, 1)
        # Stored here all the same, and B holds nothing of it.
        self.assertEqual(await get(a, "too-much.txt"), (b"x" * 5000, "local"))
        self.assertIsNone(b.files.catalog.get(upload.key))
        await eventually(lambda: temp_files(b) == [], "b to drop the refused replica")

    async def test_a_push_cut_by_the_link_going_down(self) -> None:
        a, b = await self.pair()
        # B loses its replica; A pushes it again over a link that is cut mid-way.
        blob, _ = await put(a, "cut.bin", BIG)
        key = BlobKey(a.node_id, blob)
        entry = a.files.catalog.get(key)
        assert entry is not None
        session = self.session(a, b)
        b.files.holdings.damaged(key, "dropped by the test")  # B lacks it now
        transport: Any = session.transport
        pushing = Deferred.fromCoroutine(a.files.sync.offer(session, key, entry))
        transport.abortConnection()
        self.assertEqual(await pushing, 0)
        # B dials A again, and the catch-up that follows sends the blob whole.
        replica = blob_path(b, a.node_id, blob)
        good = blob_path(a, a.node_id, blob).read_bytes()
        await eventually(
            lambda: replica.exists() and replica.read_bytes() == good, "the next sync", 30
        )
        await eventually(lambda: temp_files(b) == [], "no partial replica left on b")


class LostLedgerTests(TwoNodes):
    async def test_ls_and_recover_from_what_peers_prove_when_the_ledger_is_lost(self) -> None:
        # A loses its store and its ledger (private/ restored from a backup older
        # than these files): only B's copies and A's signatures on them remain.
        a, b = await self.pair()
        blob, _ = await put(a, "kept.bin", BIG)
        await put(a, "gone.txt", b"deleted before the loss")
        await a.files.delete("gone.txt")
        gone = a.files.owner.key_for("gone.txt")
        await a.stopService()
        shutil.rmtree(a.data_dir / "store")
        for stale in (a.data_dir / "private").glob("ledger.sqlite*"):
            stale.unlink()
        a = self.make_node(a.port, org="a", data_dir=a.data_dir)
        await self.connected(a, b)
        self.assertIsNone(a.files.ledger.get(blob))
        [entry] = await a.files.list_files()
        self.assertEqual(
            (entry.name, entry.size, entry.here, entry.replicas), ("kept.bin", len(BIG), False, 1)
        )
        recovered, errors = await a.files.recover()
        self.assertEqual((recovered, errors), (["kept.bin"], []))
        self.assertEqual(await get(a, "kept.bin"), (BIG, "local"))
        # The deletion B proves is kept here too: the file stays deleted.
        tomb = a.files.ledger.get(gone.blob)
        self.assertTrue(tomb is not None and tomb.deleted)
        with self.assertRaises(FileNotFound):
            await a.files.open_download("gone.txt")
        written = a.files.ledger.get(blob)
        self.assertTrue(written is not None and written.name == "kept.bin")
