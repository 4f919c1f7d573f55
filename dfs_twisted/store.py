"""Content blob store on the local disk.

Layout: ``root/<owner>/<aa>/<bb>/<blob>`` where ``aa``/``bb`` are the first two
byte pairs of the blob id (bounds the size of any one directory), plus
``root/tmp`` for blobs being written.  Older nodes left a deleted blob's
tombstone at ``<blob>.tomb`` beside it: they are read once and moved into the
index (index.py), where tombstones now live.  A blob becomes visible only
through an atomic ``os.replace`` after its data has been fsynced, so readers
never see a partial blob, even after a crash.

Blobs of a megabyte or more are written and read past the page cache (directio.py):
a blob is written once and read seldom.

This module is deliberately synchronous and free of Twisted: callers run the
blocking parts (notably :meth:`BlobWriter.commit`) in a thread.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from .directio import DIRECT_MIN, DirectReader, DirectWriter, set_direct, write_pieces

__all__ = ["BlobFile", "BlobKey", "BlobStore", "BlobWriter", "Fsync", "InvalidId", "parse_id"]

# How a file or directory is made durable: os.fsync, or a test's recording one.
Fsync = Callable[[int], None]

_ID_RE = re.compile(r"[0-9a-f]{64}")
_PREFIX_RE = re.compile(r"[0-9a-f]{2}")

_FILE_MODE = 0o600
_DIR_MODE = 0o700
_TMP_DIR = "tmp"
_TMP_SUFFIX = ".part"
_TOMB_SUFFIX = ".tomb"


class BlobFile(Protocol):
    """A stored blob opened for reading: a plain file, or a `DirectReader`."""

    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> BlobFile: ...
    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...


class InvalidId(ValueError):
    """An owner or blob id is not exactly 64 lowercase hex characters."""


def parse_id(value: str) -> str:
    """Return ``value`` if it is a 64-char lowercase hex id, else raise InvalidId.

    Every id that ends up in a path goes through here first: this is what keeps
    ``../`` and friends out of the file system.
    """
    # isinstance check first: ids come from the network and may be anything.
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise InvalidId(f"not a 64-hex id: {value!r:.80}")
    return value


@dataclass(frozen=True, slots=True)
class BlobKey:
    """Identifies one blob: the owner's id and the blob's id."""

    owner: str
    blob: str

    def __post_init__(self) -> None:
        parse_id(self.owner)
        parse_id(self.blob)


def _fsync_dir(path: str | os.PathLike[str], fsync: Fsync = os.fsync) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def _make_blob_dirs(final_path: str) -> list[str]:
    """Create the blob's missing directories; return the directories whose entries
    changed (the parent of each one made), to be synced before the blob counts."""
    # Plain strings: path objects cost more than the system calls here, per blob.
    bb_dir = os.path.dirname(final_path)
    aa_dir = os.path.dirname(bb_dir)
    owner_dir = os.path.dirname(aa_dir)
    if os.path.isdir(bb_dir):
        return []  # the usual case once a store has grown
    changed = []
    for d in (owner_dir, aa_dir, bb_dir):
        try:
            os.mkdir(d, _DIR_MODE)
        except FileExistsError:
            continue
        # A new directory entry lives in its parent: sync that too, or the
        # whole subtree may vanish after a crash.
        changed.append(os.path.dirname(d))
    return changed


def _is_prefix(name: str) -> bool:
    return _PREFIX_RE.fullmatch(name) is not None


def _is_id(name: str) -> bool:
    return _ID_RE.fullmatch(name) is not None


class BlobWriter:
    """A blob being written: to a temp file under root/tmp, invisible until commit()."""

    def __init__(
        self,
        key: BlobKey,
        fd: int,
        tmp_path: str,
        final_path: str,
        fsync: Fsync = os.fsync,
        renames: threading.Lock | None = None,
        direct: bool = True,
    ) -> None:
        self.key = key
        self._may_go_direct = direct
        self._direct: DirectWriter | None = None  # set while written past the page cache
        self._fsync = fsync
        self._renames = renames or threading.Lock()
        self.written = 0
        self._fd: int | None = fd
        self._tmp_path = tmp_path
        self._final_path = final_path
        self._committed = False
        # Writes and commit() run on worker threads while abort() may come from
        # another (e.g. on disconnect); the lock keeps them from interleaving on
        # the same fd and buffer.
        self._lock = threading.Lock()

    def write(self, data: bytes | memoryview) -> None:
        self.write_pieces([data])

    def write_pieces(self, pieces: Sequence[bytes | memoryview]) -> int:
        """Write several buffers with as few system calls as possible; return the bytes."""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise ValueError("blob writer is closed")
            total = sum(len(p) for p in pieces)
            if self._may_go_direct and self.written == 0 and total >= DIRECT_MIN:
                self._direct = DirectWriter.begin(fd)
            write_pieces(fd, self._direct, pieces, total)
            self.written += total
            return total

    def sync(self) -> None:
        """Flush what was written so far to disk, so that commit() has little left to do."""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise ValueError("blob writer is closed")
            os.fdatasync(fd)

    def commit(self) -> None:
        """Durably publish the blob, atomically replacing any previous version."""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise ValueError("blob writer is closed")
            self._fd = None
            try:
                if self._direct is not None:
                    self._direct.finish()
                # Data must be on disk before the rename makes it visible,
                # otherwise a crash could leave a visible but truncated blob.
                self._fsync(fd)
            except BaseException:
                if self._direct is not None:
                    self._direct.release()
                # Never published: nothing may be left of it in tmp.
                os.close(fd)
                self._unlink_tmp()
                raise
            os.close(fd)
            try:
                with self._renames:
                    changed = _make_blob_dirs(self._final_path)
                    os.replace(self._tmp_path, self._final_path)
            except BaseException:
                self._unlink_tmp()
                raise
            self._committed = True
            # Persist the rename itself, and the entries of new directories.
            for directory in [*changed, os.path.dirname(self._final_path)]:
                _fsync_dir(directory, self._fsync)

    def abort(self) -> None:
        """Discard the blob. Idempotent; a no-op after commit()."""
        with self._lock:
            if self._committed:
                return
            fd = self._fd
            self._fd = None
            if fd is not None:
                os.close(fd)
            if self._direct is not None:
                self._direct.release()
            self._unlink_tmp()

    def _unlink_tmp(self) -> None:
        try:
            os.unlink(self._tmp_path)
        except FileNotFoundError:
            pass


class BlobStore:
    """Blobs on disk, grouped per owner."""

    def __init__(
        self, root: str | os.PathLike[str], fsync: Fsync = os.fsync, direct: bool = True
    ) -> None:
        """``fsync``: how files and directories are made durable (tests record it);
        ``direct``: big blobs past the page cache where the file system allows it."""
        self.root = pathlib.Path(root)
        self._fsync = fsync
        self._direct = direct
        # Commits run on several threads: held while a blob file is renamed into
        # place, and by whoever removes one after checking which version it is.
        self.renames = threading.Lock()
        self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self._tmp = self.root / _TMP_DIR
        self._tmp.mkdir(mode=_DIR_MODE, exist_ok=True)
        self._root_str, self._tmp_str = str(self.root), str(self._tmp)
        self._clear_tmp()

    def _clear_tmp(self) -> None:
        # Anything left in tmp is from a crashed or killed process: it was
        # never committed, so it must never be published.
        with os.scandir(self._tmp) as it:
            for entry in it:
                if not entry.is_dir(follow_symlinks=False):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass

    def path_for(self, key: BlobKey) -> pathlib.Path:
        return pathlib.Path(self._path(key))

    def _path(self, key: BlobKey) -> str:
        # Re-check: BlobKey validates, but a path is the last line of defence
        # (object.__setattr__ can bypass a frozen dataclass).
        owner = parse_id(key.owner)
        blob = parse_id(key.blob)
        return f"{self._root_str}/{owner}/{blob[0:2]}/{blob[2:4]}/{blob}"

    def begin(self, key: BlobKey) -> BlobWriter:
        final_path = self._path(key)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while True:
            # Random name so that concurrent uploads of the same key never
            # share a temp file; O_EXCL makes a collision an error, not a clobber.
            tmp_path = f"{self._tmp_str}/{secrets.token_hex(16)}{_TMP_SUFFIX}"
            try:
                fd = os.open(tmp_path, flags, _FILE_MODE)
            except FileExistsError:
                continue
            except FileNotFoundError:
                # Someone removed the store under a running node: start it afresh.
                self._tmp.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                continue
            return BlobWriter(
                key, fd, tmp_path, final_path, self._fsync, self.renames, self._direct
            )

    def open(self, key: BlobKey) -> BlobFile | None:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            size = os.fstat(fd).st_size
            if self._direct and size >= DIRECT_MIN and set_direct(fd, True):
                return DirectReader(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return open(fd, "rb", buffering=0)

    def _stat(self, key: BlobKey) -> os.stat_result | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def exists(self, key: BlobKey) -> bool:
        return self._stat(key) is not None

    def size(self, key: BlobKey) -> int | None:
        st = self._stat(key)
        return None if st is None else st.st_size

    def delete(self, key: BlobKey) -> bool:
        """Remove a blob, durably."""
        if not self.unlink(key):
            return False
        _fsync_dir(self.path_for(key).parent, self._fsync)
        return True

    def unlink(self, key: BlobKey) -> bool:
        """Remove a blob without waiting for the disk: for a blob the index already
        records as gone (found again after a crash, it is removed then)."""
        path = self.path_for(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        # Empty aa/bb dirs are kept on purpose: removing them would race with
        # a concurrent commit() that has just created them and is about to
        # rename into them.
        return True

    def _tomb_path(self, key: BlobKey) -> pathlib.Path:
        return self.path_for(key).with_name(key.blob + _TOMB_SUFFIX)

    def tombstone(self, key: BlobKey) -> bytes | None:
        try:
            return self._tomb_path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def remove_tombstone(self, key: BlobKey) -> None:
        """Remove a tombstone file (moved into the index)."""
        path = self._tomb_path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        _fsync_dir(path.parent, self._fsync)

    def tombstones(self, owner: str) -> list[str]:
        return [name for name, _ in self._iter_blobs(owner, None, _TOMB_SUFFIX)]

    def owners(self) -> list[str]:
        with os.scandir(self.root) as it:
            return sorted(e.name for e in it if _is_id(e.name) and e.is_dir(follow_symlinks=False))

    def _iter_blobs(
        self, owner: str, after: str | None, suffix: str = ""
    ) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Yield (id, entry) for owner's blobs (or ``suffix`` files) with id > after, sorted.

        The aa/bb layout sorts the same way as the ids, so whole directories
        below ``after`` are skipped without listing them.
        """
        owner_dir = self.root / parse_id(owner)
        lo_aa = after[0:2] if after is not None else ""
        lo_bb = after[2:4] if after is not None else ""
        for aa in self._sorted_prefix_dirs(owner_dir):
            if aa < lo_aa:
                continue
            for bb in self._sorted_prefix_dirs(owner_dir / aa):
                if aa == lo_aa and bb < lo_bb:
                    continue
                with os.scandir(owner_dir / aa / bb) as it:
                    entries = sorted(
                        (e for e in it if self._is_blob_entry(e, aa, bb, suffix)),
                        key=lambda e: e.name,
                    )
                for e in entries:
                    blob = e.name[: len(e.name) - len(suffix)]
                    if after is None or blob > after:
                        yield blob, e

    @staticmethod
    def _is_blob_entry(entry: os.DirEntry[str], aa: str, bb: str, suffix: str) -> bool:
        if not entry.name.endswith(suffix):
            return False
        name = entry.name[: len(entry.name) - len(suffix)]
        return (
            _is_id(name)
            and name[0:2] == aa
            and name[2:4] == bb
            and entry.is_file(follow_symlinks=False)
        )

    @staticmethod
    def _sorted_prefix_dirs(path: pathlib.Path) -> list[str]:
        try:
            with os.scandir(path) as it:
                return sorted(
                    e.name for e in it if _is_prefix(e.name) and e.is_dir(follow_symlinks=False)
                )
        except (FileNotFoundError, NotADirectoryError):
            return []

    def blobs(self, owner: str) -> list[str]:
        return [name for name, _ in self._iter_blobs(owner, None)]

    def blobs_after(self, owner: str, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Return up to ``limit`` sorted ids greater than ``after``, and whether more exist."""
        # Validate eagerly: _iter_blobs is lazy.
        parse_id(owner)
        if after is not None:
            parse_id(after)
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        # Fetch one extra to learn whether another page exists.
        page = [name for name, _ in itertools.islice(self._iter_blobs(owner, after), limit + 1)]
        return page[:limit], len(page) > limit

    def usage(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for owner in self.owners():
            total = 0
            for _, entry in self._iter_blobs(owner, None):
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass  # deleted while we were walking
            result[owner] = total
        return result
