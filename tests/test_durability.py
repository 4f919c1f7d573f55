"""Durability: nothing is acknowledged before the file and its directory are synced.

A kill -9 cannot show a missing fsync (the page cache outlives the process), so
these tests give the code a recording sync function instead of os.fsync: it
syncs for real, and notes which file or directory it synced and what the disk
looked like at that moment. The order of those calls is the promise.
"""

from __future__ import annotations

import errno
import gc
import operator
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import cast

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dfs_twisted import backup
from dfs_twisted.backup import Entry
from dfs_twisted.database import Database, GroupCommit
from dfs_twisted.diskqueue import SYNC_THREADS, DiskQueue, Workers
from dfs_twisted.identity import write_secret
from dfs_twisted.ledger import Ledger, LedgerEntry
from dfs_twisted.store import BlobKey, BlobStore

from .inprocess import eventually

pytestmark = pytest.mark.unit

OWNER = "aa" + "1" * 62
BLOB = "bc" + "2" * 62
KEY = BlobKey(OWNER, BLOB)


def fd_path(fd: int) -> Path:
    """What an open descriptor names now (Linux)."""
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


class RecordingSync:
    """os.fsync that notes each path synced, and whether ``watch`` existed then."""

    def __init__(self, watch: Path | None = None) -> None:
        self.watch = watch
        self.calls: list[tuple[Path, bool]] = []  # (what was synced, watch existed)
        self._lock = threading.Lock()  # the disk thread calls it too

    def __call__(self, fd: int) -> None:
        os.fsync(fd)
        seen = self.watch is not None and self.watch.exists()
        with self._lock:
            self.calls.append((fd_path(fd), seen))

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self.calls]


class StoreSyncTests(SynchronousTestCase):
    def test_commit_syncs_the_file_before_the_rename_and_the_directory_after(self) -> None:
        root = Path(self.mktemp()).resolve()
        store = BlobStore(root)
        final = store.path_for(KEY)
        sync = RecordingSync(watch=final)
        store = BlobStore(root, fsync=sync)
        writer = store.begin(KEY)
        writer.write(b"ciphertext")
        self.assertEqual(sync.calls, [])
        writer.commit()

        # First the data, while the blob is not yet visible under its name.
        first, visible = sync.calls[0]
        self.assertEqual(first.parent, root / "tmp")
        self.assertFalse(visible, "the file was synced after it became visible")
        # Each new directory's entry, in its parent: owner, aa, bb.
        self.assertEqual(sync.paths[1:4], [root, root / OWNER, root / OWNER / BLOB[:2]], sync.paths)
        # Last the directory holding the renamed blob, which exists by then.
        self.assertEqual(sync.calls[-1], (final.parent, True))
        self.assertEqual(final.read_bytes(), b"ciphertext")

    def test_delete_syncs_the_directory(self) -> None:
        root = Path(self.mktemp()).resolve()
        sync = RecordingSync()
        store = BlobStore(root, fsync=sync)
        writer = store.begin(KEY)
        writer.write(b"x")
        writer.commit()
        sync.calls.clear()
        self.assertTrue(store.delete(KEY))
        self.assertEqual(sync.paths, [store.path_for(KEY).parent])

    def test_a_failed_fsync_leaves_no_temp_file_and_publishes_nothing(self) -> None:
        root = Path(self.mktemp())

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        store = BlobStore(root, fsync=failing)
        writer = store.begin(KEY)
        writer.write(b"never durable")
        with self.assertRaises(OSError):
            writer.commit()
        self.assertEqual(os.listdir(root / "tmp"), [])
        self.assertFalse(store.exists(KEY))
        writer.abort()  # still safe afterwards


class QueuedCommitTests(TestCase):
    """Through the disk thread, as a node commits: the Deferred waits for the last sync."""

    timeout = 30

    async def test_commit_fires_only_after_the_directory_sync(self) -> None:
        root = Path(self.mktemp()).resolve()
        final = BlobStore(root).path_for(KEY)
        gate = threading.Event()
        self.addCleanup(gate.set)  # never leave the disk thread blocked
        sync = RecordingSync(watch=final)

        def held_at_the_directory(fd: int) -> None:
            # The directory holding the blob: hold it there until the test looks.
            if fd_path(fd) == final.parent and final.exists():
                gate.wait(20)
            sync(fd)

        store = BlobStore(root, fsync=held_at_the_directory)
        queue = DiskQueue(cast(IReactorFromThreads, reactor))
        queue.start()
        self.addCleanup(queue.stop)
        blob = queue.blob(store.begin(KEY))
        blob.write(b"y" * 100_000)
        committed: Deferred[None] = blob.commit()
        acknowledged: list[object] = []
        committed.addBoth(acknowledged.append)
        # The rename happened and the thread is in the directory's sync ...
        await eventually(final.exists, "the rename")
        self.assertEqual(acknowledged, [], "acknowledged before the directory was synced")
        gate.set()
        await eventually(lambda: acknowledged == [None], "the commit")
        self.assertEqual(sync.calls[-1], (final.parent, True))
        file_syncs = [seen for path, seen in sync.calls if path.parent == root / "tmp"]
        self.assertEqual(file_syncs, [False])

    async def test_what_follows_a_commit_runs_once_the_blob_is_durable(self) -> None:
        # The owner's ledger row follows its blob on the same thread (Ledger.recorder).
        root = Path(self.mktemp()).resolve()
        final = BlobStore(root).path_for(KEY)
        sync = RecordingSync(watch=final)
        store = BlobStore(root, fsync=sync)
        queue = DiskQueue(cast(IReactorFromThreads, reactor))
        queue.start()
        self.addCleanup(queue.stop)
        seen: list[tuple[Path, bool]] = []
        blob = queue.blob(store.begin(KEY))
        blob.write(b"z" * 1000)
        await blob.commit(lambda: seen.append(sync.calls[-1]))
        self.assertEqual(seen, [(final.parent, True)])


class WorkerTests(TestCase):
    """The disk threads: each call's result or failure back on the reactor, in order."""

    timeout = 30

    async def test_results_failures_and_stop(self) -> None:
        workers = Workers(cast(IReactorFromThreads, reactor), 1, "test-disk")
        workers.start()
        self.addCleanup(workers.stop)
        gate = threading.Event()
        first = workers.submit(gate.wait, 20)
        # Queued while the thread is busy: run in one turn after it, in order.
        ran: list[int] = []
        later = [workers.submit(ran.append, i) for i in range(5)]
        failing = workers.submit(operator.truediv, 1, 0)
        gate.set()
        self.assertTrue(await first)
        for d in later:
            await d
        self.assertEqual(ran, list(range(5)))
        with self.assertRaises(ZeroDivisionError):
            await failing
        queued = workers.submit(ran.append, 5)
        workers.stop()  # what was queued before still runs
        await queued
        self.assertEqual(ran, list(range(6)))
        with self.assertRaises(RuntimeError):
            await workers.submit(ran.append, 6)

    async def test_an_idle_thread_keeps_nothing_of_its_last_call(self) -> None:
        # A read's result is a chunk of a blob: a thread waiting for work must not
        # keep the last one it read (nor its arguments) alive.
        workers = Workers(cast(IReactorFromThreads, reactor), 2, "test-disk")
        workers.start()
        self.addCleanup(workers.stop)
        argument = Chunk()
        gone = [weakref.ref(argument)]

        def returned(result: Chunk) -> Chunk:
            gone.append(weakref.ref(result))
            return result  # and it stays the Deferred's result, as when awaited

        done = workers.submit(lambda _: Chunk(), argument).addCallback(returned)
        await eventually(lambda: len(gone) == 2, "the call")
        del argument, done
        gc.collect()
        self.assertEqual([ref() for ref in gone], [None, None])


class ReadThreadTests(TestCase):
    timeout = 30

    async def test_a_read_waits_behind_no_fsync(self) -> None:
        # Every sync thread held by a commit (a disk slow to sync many puts): a get's
        # read goes on all the same.
        queue = DiskQueue(cast(IReactorFromThreads, reactor))
        queue.start()
        self.addCleanup(queue.stop)
        gate = threading.Event()
        self.addCleanup(gate.set)
        held = [queue.sync(gate.wait, 20) for _ in range(SYNC_THREADS + 1)]
        self.assertEqual(await queue.read(operator.add, 1, 2), 3)
        self.assertFalse(gate.is_set())
        gate.set()
        for d in held:
            self.assertTrue(await d)


class Chunk:
    """Something a test can hold a weak reference to."""


class LedgerCommitTests(SynchronousTestCase):
    """Rows written right after their blobs, on the commits' threads, in groups."""

    def ledger(self) -> Ledger:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(path, lambda f, *a: maybeDeferred(f, *a))
        self.addCleanup(ledger.close)
        return ledger

    def entry(self, i: int) -> LedgerEntry:
        return LedgerEntry(f"{i:064x}", 1000 + i, False, b"proof", f"file {i}", 10, 20)

    def test_rows_waiting_while_one_is_written_go_in_one_transaction(self) -> None:
        ledger = self.ledger()
        transaction = ledger._transaction
        groups: list[list[str]] = []
        first_writing, others_waiting = threading.Event(), threading.Event()

        def slow(entries: list[LedgerEntry]) -> None:
            groups.append([e.name or "" for e in entries])
            if len(groups) == 1:
                first_writing.set()
                others_waiting.wait(20)
            transaction(entries)

        ledger._transaction = slow  # type: ignore[method-assign]
        records = [ledger.recorder(self.entry(i)) for i in range(3)]
        threads = [threading.Thread(target=record) for record in records]
        threads[0].start()
        first_writing.wait(20)
        for thread in threads[1:]:
            thread.start()
        # Both are waiting behind the first write before it ends.
        while len(ledger._waiting) < 2:
            time.sleep(0.001)
        others_waiting.set()
        for thread in threads:
            thread.join(20)
        self.assertEqual(groups[0], ["file 0"])
        self.assertEqual(sorted(groups[1]), ["file 1", "file 2"])
        self.assertEqual(len(groups), 2)
        for i in range(3):
            self.assertEqual(ledger.get(self.entry(i).blob), self.entry(i))
        self.assertEqual(ledger.newest, 1002)

    def test_a_failed_group_fails_its_writer_and_the_others_write_their_own(self) -> None:
        ledger = self.ledger()
        transaction = ledger._transaction
        failed: list[list[str | None]] = []

        def failing_once(entries: list[LedgerEntry]) -> None:
            if not failed:
                failed.append([e.name for e in entries])
                raise sqlite3.OperationalError("disk I/O error")
            transaction(entries)

        ledger._transaction = failing_once  # type: ignore[method-assign]
        first, second = self.entry(1), self.entry(2)
        record_first, record_second = ledger.recorder(first), ledger.recorder(second)
        # As if both had queued before the first write began.
        ledger._waiting.append(second)
        with self.assertRaises(sqlite3.OperationalError):
            record_first()
        self.assertEqual(failed, [["file 2", "file 1"]])
        record_second()
        self.assertIsNone(ledger.get(first.blob))
        self.assertEqual(ledger.get(second.blob), second)


class GroupCommitIdleTests(SynchronousTestCase):
    def test_idle_fires_once_every_item_added_so_far_is_written(self) -> None:
        # The disk thread, by hand: each group runs when the test says.
        runs: list[tuple[Deferred[None], list[int]]] = []
        written: list[int] = []

        def run(write: object, items: list[int]) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            runs.append((d, items))
            return d

        def next_group() -> None:
            d, items = runs.pop(0)
            written.extend(items)
            d.callback(None)

        commits: GroupCommit[int] = GroupCommit(run, lambda items: None)
        self.successResultOf(commits.idle())  # nothing added: idle at once
        commits.add(1)
        commits.add(2)  # waits for the group of 1
        idle = commits.idle()
        next_group()
        self.assertNoResult(idle)  # the group of 2 is running now
        next_group()
        self.successResultOf(idle)
        self.assertEqual(written, [1, 2])


class SecretSyncTests(SynchronousTestCase):
    def test_write_secret_syncs_the_file_then_its_directory(self) -> None:
        private = Path(self.mktemp()).resolve()
        private.mkdir()
        path = private / "node.key"
        sync = RecordingSync(watch=path)
        write_secret(path, b"secret", fsync=sync)
        [(file, visible), (directory, renamed)] = sync.calls
        self.assertEqual(file.parent, private)
        self.assertNotEqual(file, path)  # the temp file, before its rename
        self.assertFalse(visible)
        self.assertEqual((directory, renamed), (private, True))
        self.assertEqual(path.read_bytes(), b"secret")


class RestoreSyncTests(SynchronousTestCase):
    def test_restore_syncs_every_file_and_directory(self) -> None:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        target = base / "node"
        entries = [
            Entry("dfs.toml", b'org = "acme"\n'),
            Entry("private/node.key", b"KEY"),
            Entry("private/keys/" + "a" * 64 + ".key", b"READ KEY"),
        ]
        sync = RecordingSync()
        backup.restore(entries, target, fsync=sync)
        files = {target / e.path for e in entries}
        dirs = {base, target, target / "private", target / "private" / "keys"}
        self.assertEqual(set(sync.paths), files | dirs)
        # Each file before its directory, each directory before its parent.
        order = sync.paths
        for path in files | dirs - {base}:
            self.assertLess(order.index(path), order.index(path.parent), path)


class DatabaseSyncTests(SynchronousTestCase):
    def test_commits_are_synced_in_full(self) -> None:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        db = Database(path, "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
        self.addCleanup(db.close)
        # What SQLite actually applies, not what the code meant to set: 2 is FULL.
        [(level,)] = db.writer.execute("PRAGMA synchronous").fetchall()
        self.assertEqual(level, 2)
        [(mode,)] = db.writer.execute("PRAGMA journal_mode").fetchall()
        self.assertEqual(mode, "wal")
