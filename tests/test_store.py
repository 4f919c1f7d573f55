"""Tests for dfs_twisted.store (runs under both pytest and trial)."""

# trial's assert*/mktemp methods carry no annotations; strict mypy would flag
# every call to them.

from __future__ import annotations

import os
import pathlib
import stat
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.store import BlobKey, BlobStore, InvalidId, parse_id

pytestmark = pytest.mark.unit


def hid(n: int, prefix: str = "") -> str:
    """A deterministic valid id, optionally forced to start with ``prefix``."""
    h = f"{n:064x}"
    return prefix + h[len(prefix) :]


OWNER = hid(1, "aa")
OTHER = hid(2, "bb")


def tree(path: pathlib.Path) -> set[str]:
    """Every path under ``path`` (relative), to detect unexpected creations."""
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def read_all(store: BlobStore, key: BlobKey) -> bytes | None:
    f = store.open(key)
    if f is None:
        return None
    with f:
        return f.read()


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        # Modes are checked exactly; make them independent of the caller's umask.
        old_umask = os.umask(0o022)
        self.addCleanup(os.umask, old_umask)

    def new_store(self) -> BlobStore:
        return BlobStore(self.mktemp())

    def put(self, store: BlobStore, key: BlobKey, data: bytes) -> None:
        w = store.begin(key)
        w.write(data)
        w.commit()

    def tmp_files(self, store: BlobStore) -> list[str]:
        return os.listdir(store.root / "tmp")


class ParseIdTests(StoreTestCase):
    def test_valid(self) -> None:
        v = "0123456789abcdef" * 4
        self.assertIs(parse_id(v), v)

    def test_invalid(self) -> None:
        bad: list[Any] = [
            "../../etc",
            "../" * 21 + "a",
            "A" * 64,
            "0123456789ABCDEF" * 4,
            "a" * 63,
            "a" * 65,
            "a" * 63 + "\n",
            "a" * 64 + "\n",
            "g" * 64,
            "",
            None,
            42,
            b"a" * 64,
            "a" * 62 + "/a",
            "\uff41" * 64,  # fullwidth 'a': isalnum but not hex
        ]
        for value in bad:
            with self.assertRaises(InvalidId) as cm:
                parse_id(value)
            self.assertIn("not a 64-hex id", str(cm.exception))
        self.assertTrue(issubclass(InvalidId, ValueError))

    def test_message_truncated(self) -> None:
        with self.assertRaises(InvalidId) as cm:
            parse_id("x" * 1000)
        self.assertLessEqual(len(str(cm.exception)), len("not a 64-hex id: ") + 80)

    def test_blobkey_validates(self) -> None:
        BlobKey(OWNER, OTHER)
        self.assertRaises(InvalidId, BlobKey, "../../etc", OTHER)
        self.assertRaises(InvalidId, BlobKey, OWNER, "../../etc/passwd")
        self.assertRaises(InvalidId, BlobKey, OWNER.upper(), OTHER)

    def test_traversal_touches_nothing(self) -> None:
        base = pathlib.Path(self.mktemp())
        base.mkdir()
        store = BlobStore(base / "root")
        before = tree(base)
        evil = ["../../etc", "..", "../" + OWNER[3:], "tmp", OWNER.upper(), OWNER[:-1]]
        for e in evil:
            self.assertRaises(InvalidId, BlobKey, e, OTHER)
            self.assertRaises(InvalidId, BlobKey, OWNER, e)
            self.assertRaises(InvalidId, store.blobs, e)
            self.assertRaises(InvalidId, store.blobs_after, e, None, 10)
            self.assertRaises(InvalidId, store.blobs_after, OWNER, e, 10)
        # A key forged past __post_init__ is still refused when a path is built.
        forged = BlobKey(OWNER, OTHER)
        object.__setattr__(forged, "blob", "../../../../escape")
        self.assertRaises(InvalidId, store.path_for, forged)
        self.assertRaises(InvalidId, store.begin, forged)
        self.assertRaises(InvalidId, store.open, forged)
        self.assertRaises(InvalidId, store.delete, forged)
        self.assertEqual(tree(base), before)


class LayoutTests(StoreTestCase):
    def test_path_for(self) -> None:
        store = self.new_store()
        blob = "abcd" + "0" * 60
        p = store.path_for(BlobKey(OWNER, blob))
        self.assertEqual(p, store.root / OWNER / "ab" / "cd" / blob)
        self.assertIsInstance(store.root, pathlib.Path)

    def test_root_created(self) -> None:
        root = pathlib.Path(self.mktemp()) / "a" / "b"
        store = BlobStore(root)
        self.assertTrue(root.is_dir())
        self.assertTrue((root / "tmp").is_dir())
        self.assertEqual(store.owners(), [])
        self.assertEqual(store.usage(), {})

    def test_permissions(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        w = store.begin(key)
        (tmp,) = self.tmp_files(store)
        self.assertEqual(stat.S_IMODE(os.stat(store.root / "tmp" / tmp).st_mode), 0o600)
        w.write(b"x")
        w.commit()
        path = store.path_for(key)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        for d in (store.root, store.root / "tmp", *list(path.parents)[:3]):
            self.assertEqual(stat.S_IMODE(os.stat(d).st_mode), 0o700, d)


class WriteTests(StoreTestCase):
    def test_round_trip(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        w = store.begin(key)
        self.assertEqual(w.key, key)
        w.write(b"hello ")
        w.write(memoryview(b"world"))
        w.write(b"")
        self.assertEqual(w.written, 11)
        w.commit()
        self.assertTrue(store.exists(key))
        self.assertEqual(store.size(key), 11)
        self.assertEqual(read_all(store, key), b"hello world")
        self.assertEqual(store.blobs(OWNER), [OTHER])
        self.assertEqual(store.owners(), [OWNER])
        self.assertEqual(self.tmp_files(store), [])

    def test_large_write(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        data = os.urandom(3 * 1024 * 1024 + 7)
        self.put(store, key, data)
        self.assertEqual(read_all(store, key), data)

    def test_uncommitted_invisible(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        w = store.begin(key)
        w.write(b"secret")
        self.assertFalse(store.exists(key))
        self.assertIsNone(store.size(key))
        self.assertIsNone(store.open(key))
        self.assertEqual(store.owners(), [])
        self.assertEqual(store.blobs(OWNER), [])
        self.assertEqual(store.blobs_after(OWNER, None, 10), ([], False))
        self.assertEqual(store.usage(), {})
        w.abort()

    def test_abort(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        w = store.begin(key)
        w.write(b"data")
        self.assertEqual(len(self.tmp_files(store)), 1)
        w.abort()
        self.assertEqual(self.tmp_files(store), [])
        self.assertFalse(store.exists(key))
        w.abort()  # idempotent
        self.assertRaises(ValueError, w.write, b"more")
        self.assertRaises(ValueError, w.commit)
        self.assertFalse(store.exists(key))

    def test_abort_after_commit_is_noop(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        w = store.begin(key)
        w.write(b"kept")
        w.commit()
        w.abort()
        self.assertEqual(read_all(store, key), b"kept")
        self.assertRaises(ValueError, w.commit)
        self.assertRaises(ValueError, w.write, b"x")

    def test_concurrent_writers_same_key(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        w1 = store.begin(key)
        w2 = store.begin(key)
        w1.write(b"one")
        w2.write(b"two")
        self.assertEqual(len(self.tmp_files(store)), 2)
        w1.commit()
        w2.commit()
        self.assertEqual(read_all(store, key), b"two")
        self.assertEqual(self.tmp_files(store), [])

    def test_replace_is_atomic(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        self.put(store, key, b"old content")
        w = store.begin(key)
        w.write(b"new")
        self.assertEqual(read_all(store, key), b"old content")
        self.assertEqual(store.size(key), 11)
        reader = store.open(key)
        assert reader is not None
        with reader:
            w.commit()
            # A reader opened before the replace keeps the old version intact.
            self.assertEqual(reader.read(), b"old content")
        self.assertEqual(read_all(store, key), b"new")
        self.assertEqual(store.blobs(OWNER), [OTHER])

    def test_new_store_clears_tmp(self) -> None:
        root = self.mktemp()
        store = BlobStore(root)
        key = BlobKey(OWNER, OTHER)
        w = store.begin(key)
        w.write(b"half a blob")
        # Simulate a crash: the writer is never committed nor aborted.
        stray = store.root / "tmp" / "leftover.part"
        stray.write_bytes(b"junk")
        self.assertEqual(len(self.tmp_files(store)), 2)
        store2 = BlobStore(root)
        self.assertEqual(self.tmp_files(store2), [])
        self.assertFalse(store2.exists(key))
        self.assertEqual(store2.owners(), [])
        w.abort()  # temp file already gone: must not raise

    def test_reopen_keeps_blobs(self) -> None:
        root = self.mktemp()
        key = BlobKey(OWNER, OTHER)
        self.put(BlobStore(root), key, b"persist")
        self.assertEqual(read_all(BlobStore(root), key), b"persist")

    def test_delete(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, OTHER)
        self.assertFalse(store.delete(key))
        self.put(store, key, b"x")
        self.assertTrue(store.delete(key))
        self.assertFalse(store.exists(key))
        self.assertIsNone(store.open(key))
        self.assertEqual(store.blobs(OWNER), [])
        self.assertFalse(store.delete(key))
        # The store keeps working in the now-empty directories.
        self.put(store, key, b"y")
        self.assertEqual(read_all(store, key), b"y")


class ListingTests(StoreTestCase):
    def test_listing_ignores_strays(self) -> None:
        store = self.new_store()
        b1, b2 = hid(10, "0102"), hid(11, "ff00")
        self.put(store, BlobKey(OWNER, b1), b"1")
        self.put(store, BlobKey(OWNER, b2), b"22")
        root = store.root
        od = root / OWNER
        # Root-level junk: not owners.
        (root / "notes.txt").write_text("x")
        (root / OTHER).write_text("a file, not an owner dir")
        (root / OWNER.upper()).mkdir()
        (root / "lost+found").mkdir()
        # Owner-level junk: not blobs.
        (od / "README").write_text("x")
        (od / "zz").mkdir()
        (od / "zz" / "00").mkdir()
        (od / "zz" / "00" / hid(12)).write_text("bad aa dir")
        (od / "01" / "02" / "junk.part").write_text("x")
        (od / "01" / "02" / b1.upper()).write_text("x")
        (od / "01" / "02" / hid(13, "0103")).write_text("wrong bb dir")
        (od / "01" / "02" / hid(14, "0102")).mkdir()  # a dir, not a blob
        (od / "01" / "abc").mkdir()
        (od / "01" / "03").write_text("file in place of a bb dir")
        self.assertEqual(store.owners(), [OWNER])
        self.assertEqual(store.blobs(OWNER), [b1, b2])
        self.assertEqual(store.blobs_after(OWNER, None, 10), ([b1, b2], False))
        self.assertEqual(store.usage(), {OWNER: 3})

    def test_owners_and_usage(self) -> None:
        store = self.new_store()
        self.put(store, BlobKey(OTHER, hid(1)), b"abc")
        self.put(store, BlobKey(OWNER, hid(1)), b"")
        self.put(store, BlobKey(OWNER, hid(2)), b"12345")
        self.assertEqual(store.owners(), [OWNER, OTHER])
        self.assertEqual(store.usage(), {OWNER: 5, OTHER: 3})
        self.assertEqual(store.blobs(hid(99)), [])

    def test_blobs_after_paging(self) -> None:
        store = self.new_store()
        # Ids spread over several aa/bb dirs, some sharing them.
        ids = sorted(
            {hid(i, p) for i, p in enumerate(["00", "0000", "0001", "01ff", "7f", "ff", "ffff"])}
            | {hid(100 + i, "aabb") for i in range(5)}
        )
        for b in ids:
            self.put(store, BlobKey(OWNER, b), b"x")
        self.assertEqual(store.blobs(OWNER), ids)
        for limit in (1, 2, 3, 5, len(ids), len(ids) + 1):
            got: list[str] = []
            after: str | None = None
            while True:
                page, more = store.blobs_after(OWNER, after, limit)
                self.assertLessEqual(len(page), limit)
                got += page
                if not more:
                    break
                self.assertEqual(len(page), limit)
                after = page[-1]
            self.assertEqual(got, ids, limit)
        # ``after`` need not be a stored id.
        # "0" * 64 is itself ids[0]: strictly-greater excludes it.
        self.assertEqual(store.blobs_after(OWNER, "0" * 64, 100), (ids[1:], False))
        self.assertEqual(store.blobs_after(OWNER, "f" * 64, 100), ([], False))
        mid = hid(0, "80")
        expected = [b for b in ids if b > mid]
        self.assertEqual(store.blobs_after(OWNER, mid, 100), (expected, False))
        self.assertEqual(store.blobs_after(OWNER, ids[0], 0), ([], True))
        self.assertEqual(store.blobs_after(OWNER, ids[-1], 0), ([], False))
        self.assertRaises(ValueError, store.blobs_after, OWNER, None, -1)


# Small id pools with shared prefixes, so operations collide and share dirs.
_OWNERS = [hid(1, "aa"), hid(2, "aa")]
_BLOBS = [hid(3, "0000"), hid(4, "0000"), hid(5, "0001"), hid(6, "ff")]

_op = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from(_OWNERS),
        st.sampled_from(_BLOBS),
        st.binary(max_size=64),
    ),
    st.tuples(
        st.just("abort"),
        st.sampled_from(_OWNERS),
        st.sampled_from(_BLOBS),
        st.binary(max_size=8),
    ),
    st.tuples(st.just("delete"), st.sampled_from(_OWNERS), st.sampled_from(_BLOBS), st.just(b"")),
)


class PropertyTests(StoreTestCase):
    @settings(max_examples=40, deadline=None, database=None)
    @given(st.lists(_op, max_size=25))
    def test_matches_dict_model(self, ops: list[tuple[str, str, str, bytes]]) -> None:
        store = self.new_store()
        model: dict[BlobKey, bytes] = {}
        for kind, owner, blob, data in ops:
            key = BlobKey(owner, blob)
            if kind == "put":
                self.put(store, key, data)
                model[key] = data
            elif kind == "abort":
                w = store.begin(key)
                w.write(data)
                w.abort()
            else:
                self.assertEqual(store.delete(key), key in model)
                model.pop(key, None)
        for owner in _OWNERS:
            expected = sorted(k.blob for k in model if k.owner == owner)
            self.assertEqual(store.blobs(owner), expected)
            page, more = store.blobs_after(owner, None, 2)
            self.assertEqual((page, more), (expected[:2], len(expected) > 2))
            for blob in _BLOBS:
                key = BlobKey(owner, blob)
                self.assertEqual(read_all(store, key), model.get(key))
                self.assertEqual(store.exists(key), key in model)
                self.assertEqual(store.size(key), len(model[key]) if key in model else None)
        usage = store.usage()
        for owner in _OWNERS:
            total = sum(len(v) for k, v in model.items() if k.owner == owner)
            self.assertEqual(usage.get(owner, 0), total)
        self.assertEqual(self.tmp_files(store), [])


class LegacyTombstoneTests(StoreTestCase):
    """Tombstone files of older nodes are read, listed apart, and removed once moved."""

    def test_read_listed_apart_and_removed(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, hid(7, "cc"))
        self.put(store, key, b"ciphertext")
        store.path_for(key).with_suffix(".tomb").write_bytes(b"record")
        self.assertEqual(store.tombstone(key), b"record")
        self.assertEqual(store.tombstones(OWNER), [key.blob])
        self.assertEqual(store.blobs(OWNER), [key.blob])
        store.remove_tombstone(key)
        store.remove_tombstone(key)  # idempotent
        self.assertIsNone(store.tombstone(key))
        self.assertEqual(store.tombstones(OWNER), [])

    def test_unlink_removes_a_blob(self) -> None:
        store = self.new_store()
        key = BlobKey(OWNER, hid(8))
        self.put(store, key, b"gone")
        self.assertTrue(store.unlink(key))
        self.assertFalse(store.unlink(key))
        self.assertFalse(store.exists(key))
