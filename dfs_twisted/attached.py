"""An upload's body handed over as an open file instead of sent as bytes.

``dfs put`` on the node's own machine attaches its file's descriptor to the request
head (SCM_RIGHTS over ``private/api.sock``) and sends no body; the node reads the file
itself. The bytes then cross one copy (page cache to the node) instead of two (page
cache to the socket, socket to the node), the client spends nothing per byte, and the
reads come in whole encryption chunks, sealed without being staged.

The descriptor is the client's: only a regular file open for reading is taken, it is
read from its current offset for the size it has when handed over (a file that
shrinks meanwhile fails the put), and it is closed once the put is done with it. Reads
share the file offset with the client, which is how its progress bar follows them.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

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


__all__ = ["ATTACHED", "AttachedFile", "AttachedFileError"]
