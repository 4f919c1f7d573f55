"""Direct I/O: file data moved between the disk and a program's memory past the
page cache (``O_DIRECT``), for big files written once and read seldom.

Filling the page cache costs more CPU than the transfer itself, most of all on a
VM whose fresh memory is costly to touch. Measured on the benchmark machine (2
cores, ext4 on a virtio disk), per GiB in 1 MiB writes: 2.0-2.7 s of kernel time
through the cache against 0.05 s direct; reading a file not in the cache, 2.3 s
against 0.06 s. Direct transfers need the file offset, the length and the memory
in whole blocks of `ALIGN` bytes: data goes through an aligned buffer, and a
file's last partial block through the page cache. A file system that refuses
``O_DIRECT`` gets the page cache, untouched.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Sequence
from queue import SimpleQueue
from types import TracebackType

__all__ = ["ALIGN", "DIRECT_MIN", "DirectReader", "DirectWriter", "FileFiller", "set_direct"]

ALIGN = 4096
BUFFER = 1 << 20
DIRECT_MIN = 1 << 20  # smaller files go through the page cache: it costs them little


class _Buffers:
    """Page-aligned buffers for direct I/O, kept for the next blob: memory used
    before costs no page faults (on a VM, fresh memory is the costly kind)."""

    def __init__(self, size: int, keep: int) -> None:
        self._size = size
        self._keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        """A buffer for one file's reads or writes, given back once the file is done."""
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self._size)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buffer)
                return
        buffer.close()


_buffers = _Buffers(BUFFER, 16)


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for ``fd``; False if the file system refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    return True


class DirectReader:
    """A blob read past the page cache, through an aligned buffer: reads of any size
    at any offset, each answered whole (up to the end of the file)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self._size = size
        self._pos = 0
        self._buffer = _buffers.take()
        self._start = 0  # the file offset of the buffer's first byte (aligned)
        self._length = 0  # how many of the buffer's bytes are the file's

    def read(self, size: int = -1, /) -> bytes:
        if self._fd is None:
            raise ValueError("read of a closed blob")
        end = self._size if size < 0 else min(self._pos + size, self._size)
        parts = []
        while self._pos < end:
            if not self._start <= self._pos < self._start + self._length:
                self._fill()
            offset = self._pos - self._start
            n = min(end - self._pos, self._length - offset)
            parts.append(self._buffer[offset : offset + n])
            self._pos += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _fill(self) -> None:
        """Make the buffer hold the file from the block of the read position on,
        keeping what it already holds of that (sequential reads read each block once)."""
        assert self._fd is not None
        base = self._pos - self._pos % ALIGN
        end = self._start + self._length
        kept = end - base if self._start <= base < end and end % ALIGN == 0 else 0
        if kept:
            self._buffer.move(0, base - self._start, kept)
        with memoryview(self._buffer) as view:
            got = os.preadv(self._fd, [view[kept:]], base + kept)
        self._start, self._length = base, kept + got
        if self._pos >= self._start + self._length:
            raise OSError(errno.EIO, "blob file shorter than when opened")

    def seek(self, offset: int, whence: int = 0, /) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._size + offset
        if self._pos < 0:
            raise ValueError("negative seek position")
        return self._pos

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("fileno of a closed blob")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            _buffers.give(self._buffer)

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None, /
    ) -> None:
        self.close()


class DirectWriter:
    """A file written past the page cache, from the start: whole blocks go to the
    disk as the buffer fills, the last partial block through the cache at `finish`."""

    def __init__(self, fd: int) -> None:
        """``fd``: an empty file that `set_direct` put in direct mode."""
        self._fd = fd
        self._buffer: mmap.mmap | None = _buffers.take()
        self._filled = 0

    @classmethod
    def begin(cls, fd: int) -> DirectWriter | None:
        """A writer for ``fd``, or None where the file system refuses direct I/O."""
        return cls(fd) if set_direct(fd, True) else None

    def write(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Copy ``pieces`` into the buffer, writing it out each time it is full."""
        buffer = self._buffer
        if buffer is None:
            raise ValueError("write after finish")
        size = len(buffer)
        for piece in pieces:
            with memoryview(piece) as view:
                at = 0
                while at < len(view):
                    n = min(len(view) - at, size - self._filled)
                    buffer[self._filled : self._filled + n] = view[at : at + n]
                    self._filled += n
                    at += n
                    if self._filled == size:
                        self._drain(last=False)

    def finish(self) -> None:
        """Write what is left (the last partial block through the page cache)."""
        if self._buffer is not None:
            try:
                self._drain(last=True)
            finally:
                self.release()

    def release(self) -> None:
        """Give the buffer back, what it still holds unwritten (after a failure)."""
        if self._buffer is not None:
            _buffers.give(self._buffer)
            self._buffer = None

    def _drain(self, last: bool) -> None:
        """Write the buffer's whole blocks; keep the rest for later, or with ``last``
        write it through the page cache."""
        buffer = self._buffer
        assert buffer is not None
        with memoryview(buffer) as view:
            if last:
                _write_end(self._fd, view[: self._filled])
                whole = self._filled
            else:
                whole = self._filled - self._filled % ALIGN
                _write_blocks(self._fd, view[:whole])
        buffer.move(0, whole, self._filled - whole)
        self._filled -= whole


class FileFiller:
    """A new file written past the page cache by a thread of its own, from buffers
    the caller fills in place (`space`, then `filled`): while one is written, the
    next one is read into.

    For `dfs get`: a direct write blocks its caller for about a millisecond a
    MiB, the socket read meanwhile filled up, and the node, its send buffer full,
    waited too (a get after loss was 15-20% slower into a file than to
    /dev/null). Reading into the aligned buffer also saves copying each byte.
    """

    def __init__(self, fd: int) -> None:
        """``fd``: an empty file that `set_direct` put in direct mode."""
        self._fd = fd
        self._current = _buffers.take()
        self._spare = _buffers.take()
        self._filled = 0
        self._writes: SimpleQueue[memoryview | None] = SimpleQueue()
        self._written: SimpleQueue[BaseException | None] = SimpleQueue()
        self._writing = False
        self._thread = threading.Thread(target=self._write_each, name="dfs-fill", daemon=True)
        self._thread.start()

    @classmethod
    def begin(cls, fd: int) -> FileFiller | None:
        """A filler for ``fd``, or None where the file system refuses direct I/O."""
        return cls(fd) if set_direct(fd, True) else None

    def space(self) -> memoryview:
        """The rest of the buffer being filled (release it before `filled`)."""
        return memoryview(self._current)[self._filled :]

    def filled(self, n: int) -> None:
        """``n`` more bytes are in the buffer; a full one goes to the disk."""
        self._filled += n
        if self._filled == len(self._current):
            self._wait()  # the spare is free once the write before ended
            self._writes.put(memoryview(self._current))
            self._writing = True
            self._current, self._spare = self._spare, self._current
            self._filled = 0

    def finish(self) -> None:
        """Wait for the writes, then write the last partial buffer."""
        self._wait()
        with memoryview(self._current) as view:
            _write_end(self._fd, view[: self._filled])
        self._filled = 0

    def close(self) -> None:
        """End the thread (after the write under way) and give the buffers back."""
        if self._thread.is_alive():
            self._writes.put(None)
            self._thread.join()
            self._writing = False
            _buffers.give(self._current)
            _buffers.give(self._spare)

    def _wait(self) -> None:
        if self._writing:
            self._writing = False
            error = self._written.get()
            if error is not None:
                raise error

    def _write_each(self) -> None:
        while (view := self._writes.get()) is not None:
            try:
                with view:
                    _write_blocks(self._fd, view)
            except BaseException as e:
                self._written.put(e)
            else:
                self._written.put(None)


def _write_blocks(fd: int, view: memoryview) -> None:
    """Write whole blocks past the page cache."""
    try:
        write_all(fd, view)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        # Refused after all (a short write left the file offset out of line, or
        # the device wants bigger blocks): through the cache then.
        set_direct(fd, False)
        write_all(fd, view)


def _write_end(fd: int, view: memoryview) -> None:
    """Write a file's last bytes: whole blocks past the cache, the rest through it."""
    whole = len(view) - len(view) % ALIGN
    _write_blocks(fd, view[:whole])
    set_direct(fd, False)
    write_all(fd, view[whole:])


def write_pieces(
    fd: int, direct: DirectWriter | None, pieces: Sequence[bytes | memoryview], total: int
) -> None:
    """``pieces`` (``total`` bytes) to ``fd``: through ``direct`` if given, else with
    as few system calls as possible."""
    if direct is not None:
        direct.write(pieces)
        return
    done = os.writev(fd, pieces)
    if done < total:  # short write (signals, big buffers): finish the rest
        write_all(fd, memoryview(b"".join(pieces))[done:])


def write_all(fd: int, view: memoryview) -> None:
    # os.write may write less than asked (signals, big buffers): loop.
    while view:
        view = view[os.write(fd, view) :]
