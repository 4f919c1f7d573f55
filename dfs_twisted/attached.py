"""Files handed over with a request on the Unix socket, instead of bytes sent.

An upload's body (`AttachedFile`):
``dfs put`` on the node's own machine attaches its file's descriptor to the request
head (SCM_RIGHTS over ``private/api.sock``) and sends no body; the node reads the file
itself. The bytes then cross one copy (page cache to the node) instead of two (page
cache to the socket, socket to the node), the client spends nothing per byte, and the
reads come in whole encryption chunks, sealed without being staged.

The descriptor is the client's: only a regular file open for reading is taken, it is
read from its current offset for the size it has when handed over (a file that
shrinks meanwhile fails the put), and it is closed once the put is done with it. Reads
share the file offset with the client, which is how its progress bar follows them.

A download's destination (`OutputFile`, ``Dfs-Into: file-descriptor``): ``dfs get -o``
attaches the empty temp file it will rename, and the node writes the plaintext into
it, past the page cache where the file system allows, from its disk write thread
(`DownloadInto` feeds it there, pausing the download while the disk lags). The
client neither reads nor copies a byte.
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer

from .directio import DIRECT_MIN, DirectWriter, write_pieces
from .diskqueue import DiskQueue

# The header that says so: ``Dfs-Body: file-descriptor``.
ATTACHED = b"file-descriptor"


class AttachedFileError(ValueError):
    """The descriptor cannot be an upload's body (one line, for the client)."""


Read = Callable[..., Deferred[bytes]]


@implementer(IPushProducer)
class AttachedFile:
    """An open file to read for a put: `pour` it into the upload, pausable."""

    def __init__(self, fd: int, read: Read, block: int) -> None:
        """``fd``: closed by `pour` (by the caller if `pour` is never called);
        ``read(os.read, fd, n)`` runs a read off the reactor; ``block``: bytes per
        read (the encryption chunk)."""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AttachedFileError("the attached descriptor is not a regular file")
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                raise AttachedFileError("the attached file is not open for reading")
            self.size = max(0, info.st_size - os.lseek(fd, 0, os.SEEK_CUR))
        except OSError as e:
            raise AttachedFileError(f"cannot use the attached file: {e.strerror}") from None
        self._fd = fd
        self._read = read
        self._block = block
        self._paused: Deferred[None] | None = None
        self._stopped = False

    async def pour(self, write: Callable[[bytes], None]) -> None:
        """``write`` every byte, then close the file (whatever happens)."""
        left = self.size
        reading = self._next(left) if left else None
        try:
            while reading is not None:
                try:
                    data = await reading
                except OSError as e:
                    raise AttachedFileError(
                        f"cannot read the attached file: {e.strerror}"
                    ) from None
                finally:
                    reading = None
                if self._stopped:  # the read under way, if any, is over: stop there
                    raise AttachedFileError("the put was stopped")
                if not data:
                    done = self.size - left
                    raise AttachedFileError(
                        f"the file shrank while it was read ({done} of {self.size} bytes)"
                    )
                left -= len(data)
                # The next read runs while this block is encrypted and sent.
                reading = self._next(left) if left else None
                write(data)
                while self._paused is not None and not self._stopped:
                    await self._paused
        finally:
            if reading is not None:
                # The thread may still be reading the descriptor: close it after.
                reading.addBoth(lambda _: os.close(self._fd))
            else:
                os.close(self._fd)

    def _next(self, left: int) -> Deferred[bytes]:
        return self._read(os.read, self._fd, min(self._block, left))

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()


class OutputFile:
    """The client's empty file a download is written into (a `diskqueue.Writer`):
    from its start, on the write thread; closed by `commit` or `abort`, whichever
    comes first."""

    key = None  # not a blob

    def __init__(self, fd: int) -> None:
        """``fd``: the caller's until this returns (it closes it on an error)."""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AttachedFileError("the attached output is not a regular file")
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                raise AttachedFileError("the attached output is not open for writing")
            if info.st_size or os.lseek(fd, 0, os.SEEK_CUR):
                raise AttachedFileError("the attached output is not an empty file")
        except OSError as e:
            raise AttachedFileError(f"cannot use the attached output: {e.strerror}") from None
        self._fd: int | None = fd
        self._direct: DirectWriter | None = None
        self.written = 0
        # Writes run on the write thread, commit on a sync thread and abort on
        # another: never on the same descriptor and buffer at once.
        self._lock = threading.Lock()

    def write_pieces(self, pieces: Sequence[bytes | memoryview]) -> int:
        with self._lock:
            if self._fd is None:
                raise ValueError("the output is closed")
            total = sum(len(p) for p in pieces)
            if self.written == 0 and total >= DIRECT_MIN:
                self._direct = DirectWriter.begin(self._fd)
            write_pieces(self._fd, self._direct, pieces, total)
            self.written += total
            return total

    def sync(self) -> None:
        pass  # the client's file: making it durable is the client's call, as for stdout

    def commit(self) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("the output is closed")
            try:
                if self._direct is not None:
                    self._direct.finish()
            finally:
                self._close()

    def abort(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._close()

    def _close(self) -> None:
        if self._direct is not None:
            self._direct.release()
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None


@implementer(IConsumer)
class DownloadInto:
    """A download's consumer that writes into an `OutputFile` on the disk threads."""

    def __init__(self, disk: DiskQueue, output: OutputFile) -> None:
        self._producer: Any = None  # a download's: a push producer
        self._stopped = False
        self._blob = disk.blob(output, pause=self._pause, resume=self._resume)

    @property
    def written(self) -> int:
        return self._blob.written

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = producer
        if self._stopped:
            producer.stopProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        self._blob.write(data)

    def finish(self) -> Deferred[None]:
        """Fires once every byte is written (fails if a write failed)."""
        return self._blob.commit()

    def abort(self) -> None:
        self._blob.abort()

    def stop(self) -> None:
        """Stop the download (its stream then fails)."""
        self._stopped = True
        if self._producer is not None:
            self._producer.stopProducing()

    def _pause(self) -> None:
        if self._producer is not None:
            self._producer.pauseProducing()

    def _resume(self) -> None:
        if self._producer is not None:
            self._producer.resumeProducing()


__all__ = ["ATTACHED", "AttachedFile", "AttachedFileError", "DownloadInto", "OutputFile"]
