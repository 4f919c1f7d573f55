"""The in-memory catalog, and its rebuilding from a store on disk."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.catalog import BLOCK, Catalog, Entry
from dfs_twisted.crypto import Encryptor, OrgKey, Tombstone
from dfs_twisted.files.holdings import index_store
from dfs_twisted.store import BlobKey, BlobStore

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


class IndexStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.signer = Ed25519PrivateKey.generate()
        self.key = OrgKey.generate()
        self.store = BlobStore(self.mktemp())

    def put(self, name: str, version: int) -> BlobKey:
        enc = Encryptor(self.key, self.signer, name, version)
        key = BlobKey(enc.owner, enc.blob)
        writer = self.store.begin(key)
        for piece in (enc.header, *enc.update(b"data"), enc.finalize()):
            writer.write(piece)
        writer.commit()
        return key

    def test_rebuilds_versions_and_tombstones(self) -> None:
        live = self.put("live", 10)
        gone = self.put("gone", 11)
        self.store.put_tombstone(gone, Tombstone.sign(self.signer, gone.blob, 12).to_bytes())
        catalog = index_store(self.store)
        live_entry = catalog.get(live)
        assert live_entry is not None
        self.assertEqual((live_entry.version, live_entry.deleted), (10, False))
        self.assertEqual(live_entry.size, self.store.size(live))
        self.assertEqual(catalog.get(gone), Entry(12, 0, deleted=True))

    def test_blob_outdated_by_a_tombstone_goes(self) -> None:
        # A crash between writing a tombstone and unlinking the blob leaves both.
        key = self.put("crashed", 20)
        record = Tombstone.sign(self.signer, key.blob, 21).to_bytes()
        (self.store.path_for(key).with_suffix(".tomb")).write_bytes(record)
        self.assertEqual(index_store(self.store).get(key), Entry(21, 0, deleted=True))
        self.assertFalse(self.store.exists(key))

    def test_forged_tombstone_is_ignored(self) -> None:
        key = self.put("kept", 30)
        forged = Tombstone.sign(Ed25519PrivateKey.generate(), key.blob, 31).to_bytes()
        (self.store.path_for(key).with_suffix(".tomb")).write_bytes(forged)
        entry = index_store(self.store).get(key)
        assert entry is not None
        self.assertEqual((entry.version, entry.deleted), (30, False))
