"""Blob writes: gathered where the data arrives, written and made durable on threads.

The pieces of a blob (a frame or a TLS record each) are gathered on the reactor and
handed to the write thread about a megabyte at a time: one hand-off per megabyte,
where one per piece cost more CPU than the write (lock, wake-up, GIL hand-over). A
big blob is written past the page cache (store.py), so a write waits for the disk;
while more than `WRITE_AHEAD` bytes wait for the write thread, the source is paused
(an HTTP upload or a peer connection).

What waits for the disk runs on worker threads. The fsyncs of blobs (their data
before the rename, their directories after it) run on a few threads at once: the
file system then makes many of them durable in one journal commit, where one
thread would wait for a commit per fsync (measured here: about 7 ms a small file
one at a time, under 1 ms with four at once). That is the group commit of many
concurrent puts; each still fires only once its own fsyncs returned. A put's
ledger row is written right after its blob, on the same sync thread (ledger.py);
aborts and the index's SQLite commits stay on one ordered thread. A rename (on a
sync thread) and the removal of an older file of the same blob never interleave
(store.BlobStore.renames). A thread runs the calls queued meanwhile in one turn and
hands their results back together (`Workers`).

Reads of blobs run on read threads of their own, one call a turn: a local get's, the
next chunk read while one is sent; a blob sent to a peer, the next piece while one
goes out (`QueuedRead`), its header first; the chunk an audit asks for and a HEAD's
header. A slow disk, or one file that takes long to read, holds that request only:
not the reactor and every other connection with it, nor a read queued behind it in
a thread's turn, nor one queued behind the fsyncs of many puts.

Every `SYNC_EVERY` bytes a blob's data is flushed on the write thread, so the final
fsync of a big blob does not stall its acknowledgement, and a blob written through
the page cache (a file system without direct I/O) keeps its dirty memory bounded
however slow the disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from .store import BlobFile

SYNC_EVERY = 64 << 20
SYNC_THREADS = 8
READ_THREADS = 8
BATCH = 1 << 20
WRITE_AHEAD = 8 << 20  # bytes of a blob waiting for the write thread before its source pauses
BATCH_CALLS = 64  # most calls a disk thread runs before handing their results back

_Job = tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]


class Workers:
    """Threads that take calls from the reactor, in the order given, and hand each
    result back to it.

    What Twisted's ThreadPool does, without its per-call context, team coordinator
    and worker objects: with a disk hand-off or two per small put, those came to
    about a sixth of a node's Python time (sampled while putting small files).
    """

    def __init__(
        self, reactor: IReactorFromThreads, threads: int, name: str, batch: int = BATCH_CALLS
    ) -> None:
        """``batch``: most calls a thread runs in one turn."""
        self._reactor = reactor
        self._batch = batch
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
        stop = False
        while not stop:
            # Each turn in a call of its own: nothing of it stays referenced while
            # the thread waits for the next (a read's result is a chunk of 1 MiB, and
            # each idle thread used to keep its last one: 8 MiB after a get).
            stop = self._turn()

    def _turn(self) -> bool:
        """Run the next call and those queued meanwhile; True once told to stop."""
        jobs = self._jobs
        job = jobs.get()
        if job is None:
            return True
        # The calls queued meanwhile run in the same turn and their results go back
        # together: one wake-up of the reactor for them all, and none of this thread
        # (the costly part of a hand-off) while it is busy.
        batch = [job]
        stop = False
        while len(batch) < self._batch:
            try:
                more = jobs.get_nowait()
            except Empty:
                break
            if more is None:
                stop = True
                break
            batch.append(more)
        self._reactor.callFromThread(_deliver, [_run(*call) for call in batch])
        return stop


def _run(
    f: Callable[..., Any], args: tuple[Any, ...], done: Deferred[Any]
) -> tuple[Deferred[Any], bool, Any]:
    try:
        return done, True, f(*args)
    except BaseException:
        return done, False, Failure()


def _deliver(results: list[tuple[Deferred[Any], bool, Any]]) -> None:
    for done, ok, result in results:
        if ok:
            done.callback(result)
        else:
            done.errback(result)


class Writer(Protocol):
    """A file being written, as `QueuedBlob` drives it: a blob (store.BlobWriter) or
    the file a download goes into (attached.OutputFile)."""

    @property
    def key(self) -> Any: ...
    def write_pieces(self, pieces: Sequence[bytes | memoryview]) -> int: ...
    def sync(self) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class DiskQueue:
    """The node's disk threads: one in order, one for blob data, a few for fsyncs and a
    few for reads."""

    def __init__(self, reactor: IReactorFromThreads) -> None:
        self._pool = Workers(reactor, 1, "dfs-disk")
        self._writes = Workers(reactor, 1, "dfs-write")
        self._syncs = Workers(reactor, SYNC_THREADS, "dfs-sync")
        self._reads = Workers(reactor, READ_THREADS, "dfs-read", batch=1)
        self._all = (self._pool, self._writes, self._syncs, self._reads)

    def start(self) -> None:
        for workers in self._all:
            workers.start()

    def stop(self) -> None:
        for workers in self._all:
            workers.stop()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f`` on the ordered disk thread after everything queued before it."""
        return self._pool.submit(f, *args)

    def write(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f`` (a blob's data write) on the write thread, after those queued before."""
        return self._writes.submit(f, *args)

    def sync(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f`` (one that waits for fsyncs) on a sync thread, in no order."""
        return self._syncs.submit(f, *args)

    def read(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f`` (a blob read, one at a time per file) on a read thread, in no order."""
        return self._reads.submit(f, *args)

    def blob(
        self,
        writer: Writer,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> QueuedBlob:
        return QueuedBlob(self, writer, pause, resume)

    def reader(self, f: BlobFile, size: int) -> QueuedRead:
        return QueuedRead(self, f, size)


class QueuedBlob:
    """A Writer fed from the reactor: its writes run on the write thread, its
    commit on a sync thread, its abort on the ordered disk thread."""

    def __init__(
        self,
        queue: DiskQueue,
        writer: Writer,
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._writer = writer
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._writing = 0  # bytes handed to the write thread and not written yet
        self._idle_waiters: list[Deferred[None]] = []
        self._unsynced = 0  # written since the last flush; used on the write thread only
        self._broken: BaseException | None = None
        self._closed = False
        self._batch: list[bytes | memoryview] = []
        self._batched = 0
        self.written = 0

    @property
    def key(self) -> Any:
        return self._writer.key

    def write(self, data: bytes | memoryview) -> None:
        if self._closed or self._broken is not None:
            return
        self.written += len(data)
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= BATCH:
            self._flush()

    def _flush(self) -> None:
        pieces, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        self._writing += size
        self._queue.write(self._write, pieces).addBoth(self._written, size)
        if self._writing > WRITE_AHEAD and not self._paused:
            self._paused = True  # the disk is slower than the source: wait for it
            self._pause()

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        """On the write thread."""
        self._unsynced += self._writer.write_pieces(pieces)
        if self._unsynced >= SYNC_EVERY:
            self._unsynced = 0
            self._writer.sync()

    def _written(self, result: object, size: int) -> None:
        self._writing -= size
        if isinstance(result, Failure) and self._broken is None:
            self._broken = result.value  # reported by commit(), which fails
        if self._paused and self._writing <= WRITE_AHEAD // 2:
            self._paused = False
            self._resume()
        if not self._writing:
            waiting, self._idle_waiters = self._idle_waiters, []
            for d in waiting:
                d.callback(None)

    def _idle(self) -> Deferred[None]:
        """Fires when no write of this blob is waiting or running."""
        d: Deferred[None] = Deferred()
        if self._writing:
            self._idle_waiters.append(d)
        else:
            d.callback(None)
        return d

    def commit(self, then: Callable[[], None] | None = None) -> Deferred[None]:
        """Fires once every write and the commit are done (fails if any failed).

        ``then`` runs on the same sync thread once the blob is durable (a write that
        must follow it, such as the owner's ledger row): no trip back to the reactor
        and out to another thread in between."""
        rest, self._batch, self._batched = self._batch, [], 0
        self._closed = True

        def commit() -> None:
            if self._broken is not None:
                self._writer.abort()
                raise self._broken
            if rest:
                self._writer.write_pieces(rest)
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


class QueuedRead:
    """A stored blob read from the reactor (session.BlobSource): each read on a read
    thread, and as one ends the next is begun, so the disk works while the piece
    read goes out. Closing waits for a read under way: no thread reads a closed file."""

    def __init__(self, queue: DiskQueue, f: BlobFile, size: int) -> None:
        self._queue = queue
        self._file = f
        self.size = size
        self._ahead: Deferred[bytes] | None = None
        self._reading = 0  # reads on a thread: none, or one
        self._closed = False

    def read(self, n: int) -> Deferred[bytes]:
        """The next ``n`` bytes (fewer at the end, then none)."""
        if self._closed:
            return fail(ValueError("read of a closed blob"))
        reading, self._ahead = self._ahead or self._begin(n), None
        return reading.addCallback(self._read_ahead, n)

    def _begin(self, n: int) -> Deferred[bytes]:
        self._reading += 1
        return self._queue.read(self._file.read, n).addBoth(self._ended)

    def _ended(self, result: object) -> object:
        self._reading -= 1
        if self._closed and not self._reading:
            self._file.close()
        return result

    def _read_ahead(self, piece: bytes, n: int) -> bytes:
        if len(piece) == n and not self._closed:
            self._ahead = self._begin(n)
        return piece

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ahead is not None:
            self._ahead.addErrback(lambda _: None)  # nobody will read it
            self._ahead = None
        if not self._reading:
            self._file.close()
