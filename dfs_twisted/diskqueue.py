"""Blob writes: into the page cache from the caller, the waits for the disk on threads.

A write into the page cache is a memory copy: done where the data arrives (the
reactor), it costs less than handing each piece to another thread, which on a
busy machine cost more CPU than the copy itself (lock, wake-up, GIL hand-over).

What waits for the disk runs on worker threads. The fsyncs of blobs (their data
before the rename, their directories after it) run on a few threads at once: the
file system then makes many of them durable in one journal commit, where one
thread would wait for a commit per fsync (measured here: about 7 ms a small file
one at a time, under 1 ms with four at once). That is the group commit of many
concurrent puts; each still fires only once its own fsyncs returned. A put's
ledger row is written right after its blob, on the same sync thread (ledger.py);
aborts and the index's SQLite commits stay on one ordered thread. A rename (on a
sync thread) and the removal of an older file of the same blob never interleave
(store.BlobStore.renames). A thread runs the calls queued meanwhile in one turn
and hands their results back together (`Workers`).

Every `SYNC_EVERY` bytes a blob's data is flushed, so the final fsync of a big
blob does not stall its acknowledgement; while such a flush is still running and
another `SYNC_EVERY` bytes came in, the source is paused (an HTTP upload or a peer
connection): dirty memory per blob stays bounded however slow the disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from .store import BlobWriter

SYNC_EVERY = 64 << 20
SYNC_THREADS = 8
BATCH = 1 << 20
BATCH_CALLS = 64  # most calls a disk thread runs before handing their results back

_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]


class Workers:
    """Threads that take calls from the reactor, in the order given, and hand each
    result back to it.

    What Twisted's ThreadPool does, without its per-call context, team coordinator
    and worker objects: with a disk hand-off or two per small put, those came to
    about a sixth of a node's Python time (sampled while putting small files).
    """

    def __init__(self, reactor: IReactorFromThreads, threads: int, name: str) -> None:
        self._reactor = reactor
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        self._stopped = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Let the calls queued so far end, then the threads."""
        if self._stopped:
            return
        self._stopped = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    def submit(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._stopped:
            # Nobody would run it: its caller would wait for ever.
            return fail(RuntimeError("the disk threads have stopped"))
        done: Deferred[Any] = Deferred()
        self._jobs.put((f, args, done))
        return done

    def _work(self) -> None:
        jobs = self._jobs
        stop = False
        while not stop and (job := jobs.get()) is not None:
            # The calls queued meanwhile run in the same turn and their results go
            # back together: one wake-up of the reactor for them all, and none of
            # this thread (the costly part of a hand-off) while it is busy.
            batch = [job]
            while len(batch) < BATCH_CALLS:
                try:
                    more = jobs.get_nowait()
                except Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            results: list[tuple[Deferred[Any], bool, Any]] = []
            for f, args, done in batch:
                try:
                    results.append((done, True, f(*args)))
                except BaseException:
                    results.append((done, False, Failure()))
            self._reactor.callFromThread(_deliver, results)
            del job, batch, results  # no reference kept while waiting for the next


def _deliver(results: list[tuple[Deferred[Any], bool, Any]]) -> None:
    for done, ok, result in results:
        if ok:
            done.callback(result)
        else:
            done.errback(result)


class DiskQueue:
    """The node's disk threads: one in order, and a few for fsyncs."""

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._pool = Workers(reactor, 1, "dfs-disk")
        self._syncs = Workers(reactor, SYNC_THREADS, "dfs-sync")

    def start(self) -> None:
        self._pool.start()
        self._syncs.start()

    def stop(self) -> None:
        self._pool.stop()
        self._syncs.stop()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f`` on the ordered disk thread after everything queued before it."""
        return self._pool.submit(f, *args)

    def sync(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f`` (one that waits for fsyncs) on a sync thread, in no order."""
        return self._syncs.submit(f, *args)

    def blob(
        self,
        writer: BlobWriter,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> QueuedBlob:
        return QueuedBlob(self, writer, pause, resume)


class QueuedBlob:
    """A BlobWriter written from the caller's thread; its flushes and commit run on a
    sync thread, its abort on the ordered disk thread."""

    def __init__(
        self,
        queue: DiskQueue,
        writer: BlobWriter,
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._writer = writer
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._syncing = False
        self._after_sync: list[Deferred[None]] = []
        self._unsynced = 0
        self._broken: BaseException | None = None
        self._closed = False
        self._batch: list[bytes] = []
        self._batched = 0
        self.written = 0

    @property
    def key(self) -> Any:
        return self._writer.key

    def write(self, data: bytes) -> None:
        if self._closed or self._broken is not None:
            return
        self.written += len(data)
        self._batch.append(data)
        self._batched += len(data)
        # Peer data comes in pieces of a frame or a TLS record: one writev per ~1 MiB.
        if self._batched >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._batch or self._broken is not None:
            return
        pieces, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        try:
            self._writer.write_pieces(pieces)
        except OSError as e:
            self._broken = e  # reported by commit(), which fails
            return
        self._unsynced += size
        if self._unsynced < SYNC_EVERY:
            return
        if not self._syncing:
            self._unsynced = 0
            self._syncing = True
            self._queue.sync(self._writer.sync).addBoth(self._synced)
        elif not self._paused:
            self._paused = True  # the disk is slower than the source: wait for it
            self._pause()

    def _synced(self, result: object) -> None:
        self._syncing = False
        if isinstance(result, Failure) and self._broken is None:
            self._broken = result.value
        if self._paused:
            self._paused = False
            self._resume()
        waiting, self._after_sync = self._after_sync, []
        for d in waiting:
            d.callback(None)

    def _idle(self) -> Deferred[None]:
        """Fires when no flush of this blob is running (the file may be closed then)."""
        d: Deferred[None] = Deferred()
        if self._syncing:
            self._after_sync.append(d)
        else:
            d.callback(None)
        return d

    def commit(self, then: Callable[[], None] | None = None) -> Deferred[None]:
        """Fires once every write and the commit are done (fails if any failed).

        ``then`` runs on the same sync thread once the blob is durable (a write that
        must follow it, such as the owner's ledger row): no trip back to the reactor
        and out to another thread in between."""
        self._flush()
        self._closed = True

        def commit() -> None:
            if self._broken is not None:
                self._writer.abort()
                raise self._broken
            self._writer.commit()
            if then is not None:
                then()

        return self._idle().addCallback(lambda _: self._queue.sync(commit))

    def abort(self) -> None:
        self._batch, self._batched = [], 0
        if not self._closed:
            self._closed = True
            self._queue.run(self._writer.abort).addErrback(lambda _: None)
        if self._paused:
            self._paused = False
            self._resume()
