"""The in-memory catalog, and its rebuilding from a store on disk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.catalog import BLOCK, Catalog, Entry
from dfs_twisted.crypto import Encryptor, OrgKey, Tombstone
from dfs_twisted.files.holdings import load_catalog
from dfs_twisted.index import Row, StoreIndex
from dfs_twisted.store import BlobKey, BlobStore

pytestmark = pytest.mark.unit

A = "a" * 64
IDS = [f"{i:064x}" for i in range(1, 8)]


class CatalogTests(SynchronousTestCase):
    def test_versions_sizes_and_usage(self) -> None:
        catalog = Catalog()
        key = BlobKey(A, IDS[0])
        self.assertTrue(catalog.is_newer(key, 0))
        catalog.set(key, Entry(5, 100))
        catalog.set(BlobKey(A, IDS[1]), Entry(3, 50))
        self.assertFalse(catalog.is_newer(key, 5))
        self.assertTrue(catalog.is_newer(key, 6))
        self.assertEqual(catalog.usage(), {A: 150})
        catalog.set(key, Entry(6, 0, deleted=True))
        # The quota counts the tombstone and the small blob a block each.
        self.assertEqual((catalog.held(A), catalog.newest(A)), (2 * BLOCK, 6))
        self.assertEqual(catalog.live(A), [IDS[1]])
        catalog.forget(BlobKey(A, IDS[1]))
        self.assertEqual(catalog.usage(), {A: 0})
        catalog.set(BlobKey(A, IDS[2]), Entry(7, 3 * BLOCK + 1))
        self.assertEqual(catalog.held(A), 4 * BLOCK + 1)
        # Forgetting the newest entry does not lower the versions a put starts above.
        catalog.forget(BlobKey(A, IDS[2]))
        self.assertEqual(catalog.newest(A), 7)

    def test_pages_and_digest(self) -> None:
        catalog, other = Catalog(), Catalog()
        for i, blob in enumerate(IDS):
            catalog.set(BlobKey(A, blob), Entry(i, 1))
            other.set(BlobKey(A, blob), Entry(i, 1))
        self.assertEqual(catalog.digest(A), other.digest(A))
        first, more = catalog.page(A, None, 3)
        self.assertEqual(([b for b, _ in first], more), (IDS[:3], True))
        rest, more = catalog.page(A, first[-1][0], 10)
        self.assertEqual(([b for b, _ in rest], more), (IDS[3:], False))
        other.set(BlobKey(A, IDS[2]), Entry(9, 1))
        self.assertNotEqual(catalog.digest(A), other.digest(A))
        self.assertEqual(catalog.digest("b" * 64), Catalog().digest("c" * 64))


def now(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Runs what the disk thread would run, at once."""
    return succeed(f(*args))


class LoadCatalogTests(SynchronousTestCase):
    """The catalog at start-up: read back from the index, or indexed anew."""

    def setUp(self) -> None:
        self.signer = Ed25519PrivateKey.generate()
        self.key = OrgKey.generate()
        self.store = BlobStore(self.mktemp())
        self.path = self.store.root / "index.sqlite"

    def index(self) -> StoreIndex:
        return StoreIndex(self.path, now)

    def put(self, name: str, version: int) -> BlobKey:
        enc = Encryptor(self.key, self.signer, name, version)
        key = BlobKey(enc.owner, enc.blob)
        writer = self.store.begin(key)
        for piece in (enc.header, *enc.update(b"data"), enc.finalize()):
            writer.write(piece)
        writer.commit()
        return key

    def tomb(self, key: BlobKey, version: int) -> Tombstone:
        return Tombstone.sign(self.signer, key.blob, version)

    def test_a_new_index_is_made_from_the_store(self) -> None:
        live = self.put("live", 10)
        index = self.index()
        catalog = load_catalog(self.store, index)
        entry = catalog.get(live)
        assert entry is not None
        self.assertEqual((entry.version, entry.deleted, entry.sender), (10, False, live.owner))
        self.assertEqual(entry.size, self.store.size(live))
        # The blob's record, read from its last chunk, is in the index (not in memory).
        self.assertEqual(entry.proof, b"")
        [(version, proof)] = index.proofs(live.owner, live.blob, live.blob).values()
        self.assertEqual(version, 10)
        self.assertTrue(proof)

    def test_after_a_clean_stop_the_rows_are_read_back(self) -> None:
        key = self.put("kept", 10)
        index = self.index()
        catalog = load_catalog(self.store, index)
        index.opened()
        # Sent by a relay: who pays for it survives a restart.
        entry = Entry(10, self.store.size(key) or 0, proof=b"p", sender="b" * 64)
        index.put(Row(key, entry))
        index.closed()
        self.store.unlink(key)  # not read again: the rows are trusted
        again_index = self.index()
        again = load_catalog(self.store, again_index)
        # The proof stays in the index, read from there when a listing needs it.
        self.assertEqual(again.get(key), Entry(10, entry.size, sender="b" * 64))
        self.assertEqual(again_index.proofs(key.owner, key.blob, key.blob), {key.blob: (10, b"p")})
        self.assertEqual(again.sent_by("b" * 64), catalog.sent_by(key.owner))

    def test_after_a_crash_blobs_are_indexed_anew_and_tombstones_kept(self) -> None:
        live, gone = self.put("live", 10), self.put("gone", 11)
        index = self.index()
        load_catalog(self.store, index)
        index.opened()
        tomb = self.tomb(gone, 12)
        buried = Entry(12, 0, deleted=True, proof=tomb.signature, sender=gone.owner)
        index.put(Row(gone, buried, tomb.to_bytes()))
        newer = self.put("live", 13)  # committed, but its row never written: a crash
        del index
        catalog = load_catalog(self.store, self.index())
        self.assertEqual(catalog.get(gone), Entry(12, 0, deleted=True))
        self.assertFalse(self.store.exists(gone))  # older than its tombstone: removed
        entry = catalog.get(newer)
        assert entry is not None and newer == live
        self.assertEqual(entry.version, 13)

    def test_legacy_tombstone_files_move_into_the_index(self) -> None:
        key = self.put("crashed", 20)
        record = self.tomb(key, 21).to_bytes()
        legacy = self.store.path_for(key).with_suffix(".tomb")
        legacy.write_bytes(record)
        catalog = load_catalog(self.store, self.index())
        self.assertEqual(catalog.get(key), Entry(21, 0, deleted=True))
        self.assertFalse(self.store.exists(key))
        self.assertFalse(legacy.exists())
        self.assertEqual(self.index().tomb(key), record)

    def test_forged_tombstone_is_ignored(self) -> None:
        key = self.put("kept", 30)
        forged = Tombstone.sign(Ed25519PrivateKey.generate(), key.blob, 31).to_bytes()
        self.store.path_for(key).with_suffix(".tomb").write_bytes(forged)
        entry = load_catalog(self.store, self.index()).get(key)
        assert entry is not None
        self.assertEqual((entry.version, entry.deleted), (30, False))

    def test_a_damaged_index_is_made_anew(self) -> None:
        key = self.put("kept", 40)
        index = self.index()
        load_catalog(self.store, index)
        index.closed()
        self.path.write_bytes(b"not a database" * 100)
        index = self.index()
        self.assertTrue(index.damaged)
        entry = load_catalog(self.store, index).get(key)
        assert entry is not None
        self.assertEqual(entry.version, 40)
