"""Direct I/O (dfs_twisted.directio) and the store's use of it: real files on this
machine's file system, written and read past the page cache."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dfs_twisted.directio import ALIGN, BUFFER, DIRECT_MIN, DirectReader, DirectWriter, FileFiller
from dfs_twisted.diskqueue import WRITE_AHEAD, DiskQueue
from dfs_twisted.store import BlobKey, BlobStore, BlobWriter

pytestmark = pytest.mark.unit

KEY = BlobKey("aa" * 32, "bb" * 32)


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes where every offset differs from its neighbours' (a misplaced block shows)."""
    block = bytes((i * 7 + seed) % 251 for i in range(251 * 16))
    return (block * (size // len(block) + 1))[:size]


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


class DirectWriterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(0, 3 * BUFFER), min_size=1, max_size=6))
    def test_pieces_of_any_size_make_the_same_file(self, sizes: list[int]) -> None:
        data = pattern(sum(sizes))
        fd, path = tempfile.mkstemp(dir=self.dir)
        try:
            writer = DirectWriter.begin(fd)
            assert writer is not None, "ext4 takes direct I/O"
            at = 0
            for size in sizes:
                writer.write([data[at : at + size]])
                at += size
            writer.finish()
            # The last partial block went through the page cache: direct I/O is off.
            self.assertFalse(is_direct(fd))
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_whole_blocks_go_past_the_page_cache_the_tail_waits(self) -> None:
        fd, _ = tempfile.mkstemp(dir=self.dir)
        try:
            writer = DirectWriter.begin(fd)
            assert writer is not None
            self.assertTrue(is_direct(fd))
            writer.write([pattern(BUFFER + ALIGN + 10)])
            # A full buffer is written; the rest waits for the next or for finish.
            self.assertEqual(os.fstat(fd).st_size, BUFFER)
            writer.finish()
            self.assertEqual(os.fstat(fd).st_size, BUFFER + ALIGN + 10)
        finally:
            os.close(fd)


class FileFillerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)

    def begin(self, fd: int) -> FileFiller:
        filler = FileFiller.begin(fd)
        assert filler is not None, "ext4 takes direct I/O"
        self.addCleanup(filler.close)
        return filler

    def fill(self, filler: FileFiller, data: bytes) -> None:
        """What `dfs get` does: read into the space given, as much as it takes."""
        at = 0
        while at < len(data):
            space = filler.space()
            n = min(len(space), len(data) - at)
            space[:n] = data[at : at + n]
            space.release()
            filler.filled(n)
            at += n

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(1, 3 * BUFFER), min_size=1, max_size=6))
    def test_reads_of_any_size_make_the_same_file(self, sizes: list[int]) -> None:
        data = pattern(sum(sizes), seed=5)
        fd, path = tempfile.mkstemp(dir=self.dir)
        try:
            filler = self.begin(fd)
            at = 0
            for size in sizes:
                self.fill(filler, data[at : at + size])
                at += size
            filler.finish()
            self.assertFalse(is_direct(fd))  # the tail went through the page cache
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_the_next_buffer_fills_while_one_is_written(self) -> None:
        data = pattern(2 * BUFFER + 100)
        release = threading.Event()
        waited: list[bool] = []
        real = os.write

        def slow_disk(fd: int, view: bytes) -> int:
            if not waited:
                waited.append(release.wait(timeout=10))  # False: nobody went on meanwhile
            return real(fd, view)

        fd, path = tempfile.mkstemp(dir=self.dir)
        try:
            filler = self.begin(fd)
            self.patch(os, "write", slow_disk)
            self.fill(filler, data[: BUFFER + BUFFER // 2])  # one buffer full, and half
            self.assertEqual(os.fstat(fd).st_size, 0)  # its write has not ended
            release.set()
            self.fill(filler, data[BUFFER + BUFFER // 2 :])
            filler.finish()
        finally:
            os.close(fd)
        self.assertEqual(waited, [True])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_a_failed_write_is_raised_to_the_reader(self) -> None:
        _, path = tempfile.mkstemp(dir=self.dir)
        fd = os.open(path, os.O_RDONLY)  # every write fails (EBADF)
        try:
            filler = self.begin(fd)
            with self.assertRaises(OSError):
                self.fill(filler, pattern(2 * BUFFER))
                filler.finish()
            filler.close()
            self.assertNotIn("dfs-fill", [t.name for t in threading.enumerate()])
        finally:
            os.close(fd)


class DirectReaderTests(SynchronousTestCase):
    @settings(max_examples=40, deadline=None)
    @given(
        st.integers(0, 3 * BUFFER + 5000),
        st.lists(st.tuples(st.integers(0, 4 * BUFFER), st.integers(-1, 2 * BUFFER)), max_size=8),
    )
    def test_reads_at_any_offset_and_size_give_the_file(
        self, size: int, reads: list[tuple[int, int]]
    ) -> None:
        data = pattern(size, seed=3)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            fd = os.open(f.name, os.O_RDONLY | os.O_DIRECT)
            reader = DirectReader(fd, size)
            with reader:
                for offset, n in [(0, 100), *reads, (0, -1)]:
                    self.assertEqual(reader.seek(offset), offset)
                    expected = data[offset:] if n < 0 else data[offset : offset + n]
                    self.assertEqual(reader.read(n), expected)
                    self.assertEqual(reader.tell(), offset + len(expected))
            self.assertRaises(ValueError, reader.read, 1)

    def test_sequential_reads_read_each_block_once(self) -> None:
        data = pattern(4 * BUFFER + 123)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            fd = os.open(f.name, os.O_RDONLY | os.O_DIRECT)
            with DirectReader(fd, len(data)) as reader:
                calls = []
                real = os.preadv

                def counting(fd: int, buffers: list[memoryview], offset: int) -> int:
                    got = real(fd, buffers, offset)
                    calls.append(got)
                    return got

                self.patch(os, "preadv", counting)
                reader.seek(77)  # a header's length: every read is out of line
                got = b"".join(iter(lambda: reader.read(BUFFER), b""))
        self.assertEqual(got, data[77:])
        self.assertEqual(sum(calls), len(data))


class StoreDirectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()

    def write(self, store: BlobStore, data: bytes) -> BlobWriter:
        # As QueuedBlob hands them: a megabyte or more of pieces at a time, or a
        # small blob whole at its commit.
        writer = store.begin(KEY)
        step = 1_200_000
        for at in range(0, len(data), step):
            writer.write_pieces([data[at : at + 100_000], data[at + 100_000 : at + step]])
        return writer

    def round_trip(self, store: BlobStore, size: int, direct: bool) -> None:
        """Write and commit a blob of ``size`` bytes, read it back; each of its
        write and read is direct or not as ``direct`` says."""
        data = pattern(size)
        writer = self.write(store, data)
        self.assertEqual(is_direct(writer._fd), direct)  # type: ignore[arg-type]
        writer.commit()
        f = store.open(KEY)
        assert f is not None
        with f:
            self.assertEqual(isinstance(f, DirectReader), direct)
            self.assertEqual(f.read(), data)

    def test_a_big_blob_goes_past_the_page_cache_and_reads_back(self) -> None:
        self.round_trip(BlobStore(self.root), 3 * DIRECT_MIN + 999, direct=True)

    def test_a_small_blob_and_a_store_without_direct_io_use_the_page_cache(self) -> None:
        self.round_trip(BlobStore(self.root), 5000, direct=False)
        self.round_trip(BlobStore(self.root, direct=False), 2 * DIRECT_MIN, direct=False)

    def test_an_aborted_blob_leaves_nothing_and_gives_its_buffer_back(self) -> None:
        store = BlobStore(self.root)
        writer = self.write(store, pattern(2 * DIRECT_MIN))
        writer.abort()
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])
        self.assertIsNone(store.open(KEY))
        self.assertRaises(ValueError, writer.write_pieces, [b"x"])


class WriteAheadTests(TestCase):
    """The source of a blob pauses while more than WRITE_AHEAD bytes wait for the disk."""

    async def test_a_slow_disk_pauses_the_source_until_it_catches_up(self) -> None:
        store = BlobStore(self.mktemp())
        queue = DiskQueue(cast(IReactorFromThreads, reactor))
        queue.start()
        self.addCleanup(queue.stop)
        gate = threading.Event()
        writer = store.begin(KEY)
        real = writer.write_pieces

        def slow(pieces: list[bytes]) -> int:
            gate.wait(30)
            return real(pieces)

        writer.write_pieces = slow  # type: ignore[method-assign,assignment]
        events: list[str] = []
        blob = queue.blob(writer, lambda: events.append("pause"), lambda: events.append("resume"))
        data = pattern(WRITE_AHEAD + 3 * BUFFER)
        for at in range(0, len(data), 65536):
            blob.write(data[at : at + 65536])
        self.assertEqual(events, ["pause"])
        gate.set()
        await blob.commit()
        self.assertEqual(events, ["pause", "resume"])
        f = store.open(KEY)
        assert f is not None
        with f:
            self.assertEqual(f.read(), data)
