"""Blob writes: into the page cache from the caller, the waits for the disk on a thread.

A write into the page cache is a memory copy: done where the data arrives (the
reactor), it costs less than handing each piece to another thread, which on a
busy machine cost more CPU than the copy itself (lock, wake-up, GIL hand-over).
What waits for the disk (fdatasync, the commit's fsync, rename and directory
fsync) runs on one worker thread, in order. Every `SYNC_EVERY` bytes the data is
flushed there, so the final fsync of a big blob does not stall its
acknowledgement; while such a flush is still running and another `SYNC_EVERY`
bytes came in, the source is paused (an HTTP upload or a peer connection): dirty
memory per blob stays bounded however slow the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .store import BlobWriter

SYNC_EVERY = 64 << 20
BATCH = 1 << 20


class DiskQueue:
    """The node's disk-writing thread."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="dfs-disk")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f`` on the disk thread after everything queued before it."""
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def blob(
        self,
        writer: BlobWriter,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> QueuedBlob:
        return QueuedBlob(self, writer, pause, resume)


class QueuedBlob:
    """A BlobWriter written from the caller's thread; its flushes, commit and abort
    run on the disk thread."""

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
            self._queue.run(self._writer.sync).addBoth(self._synced)
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

    def commit(self) -> Deferred[None]:
        """Fires once every write and the commit are done (fails if any failed)."""
        self._flush()
        self._closed = True

        def commit() -> None:
            if self._broken is not None:
                self._writer.abort()
                raise self._broken
            self._writer.commit()

        return self._queue.run(commit)

    def abort(self) -> None:
        self._batch, self._batched = [], 0
        if not self._closed:
            self._closed = True
            self._queue.run(self._writer.abort).addErrback(lambda _: None)
        if self._paused:
            self._paused = False
            self._resume()
