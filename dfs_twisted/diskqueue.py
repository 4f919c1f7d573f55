"""Blob writes on a worker thread, in order, with back-pressure.

Writing to the page cache and flushing it costs as much CPU as the network path;
doing it on its own thread lets it overlap with TLS and crypto on the reactor
thread. One thread serves every blob of a node, so writes keep their order.
While a blob has more than `HIGH` bytes queued its source is paused (an HTTP
upload or a peer connection) until the queue drains below `LOW`: memory stays
bounded however slow the disk. Every `SYNC_EVERY` bytes the data is flushed,
so the final fsync of a big blob does not stall its acknowledgement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .store import BlobWriter

HIGH = 16 << 20
LOW = 4 << 20
SYNC_EVERY = 64 << 20
BATCH = 1 << 20


class DiskQueue:
    """The node's disk-writing thread."""

    def __init__(self, reactor: IReactorFromThreads) -> None:
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
    """A BlobWriter whose writes, commit and abort run on the disk thread."""

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
        self._pending = 0
        self._unsynced = 0
        self._error: Failure | None = None
        self._broken: BaseException | None = None
        self._closed = False
        self._batch: list[bytes] = []
        self._batched = 0
        self.written = 0

    @property
    def key(self) -> Any:
        return self._writer.key

    def write(self, data: bytes) -> None:
        if self._closed or self._error is not None:
            return
        self.written += len(data)
        self._batch.append(data)
        self._batched += len(data)
        # Peer data comes in TLS-record-sized pieces: hand the thread ~1 MiB at a time.
        if self._batched >= BATCH:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        pieces, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        self._pending += size
        self._queue.run(self._write, pieces).addCallbacks(self._done, self._failed, (size,))
        if self._pending > HIGH and not self._paused:
            self._paused = True
            self._pause()

    def _write(self, pieces: list[bytes]) -> None:
        # On the disk thread, like _broken and _unsynced.
        if self._broken is not None:
            return
        try:
            written = self._writer.write_pieces(pieces)
        except BaseException as e:
            self._broken = e
            raise
        self._unsynced += written
        if self._unsynced >= SYNC_EVERY:
            self._unsynced = 0
            self._writer.sync()

    def _done(self, _: object, size: int) -> None:
        self._pending -= size
        if self._paused and self._pending <= LOW:
            self._paused = False
            self._resume()

    def _failed(self, failure: Failure, size: int) -> None:
        if self._error is None:
            self._error = failure
        self._done(None, size)

    def commit(self) -> Deferred[None]:
        """Fires once every write and the commit are done (fails if any failed)."""
        self._submit()
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
