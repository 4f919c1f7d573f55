"""The digest tree of a namespace: kept by the catalog change by change, it equals
the tree built from scratch, and the catalog loaded in bulk from the index equals
the one built entry by entry."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import merkle, wire
from dfs_twisted.catalog import BLOCK, Catalog, Entry
from dfs_twisted.index import Row, StoreIndex
from dfs_twisted.store import BlobKey

pytestmark = pytest.mark.unit

A, B = "a" * 64, "b" * 64
SENDERS = ["c" * 64, "d" * 64, A]


def _run(f: Any, *args: Any) -> Deferred[Any]:
    return succeed(f(*args))


def random_ids(rng: random.Random, count: int, prefix: str = "") -> list[str]:
    return [prefix + rng.randbytes(32).hex()[len(prefix) :] for _ in range(count)]


def scratch(catalog: Catalog, owner: str, prefix: str = "") -> tuple[str, int]:
    entries = ((b, e.version, e.deleted) for b, e in catalog.entries(owner))
    digest, count = merkle.digest_of(entries, prefix)
    return digest.hex(), count


class TreeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.rng = random.Random(14)
        # Crowded leaves and first-level nodes too: many ids share their first bytes.
        self.ids = (
            random_ids(self.rng, 400)
            + random_ids(self.rng, 40, "ab")
            + random_ids(self.rng, 20, "abcd")
        )
        self.catalog = Catalog()

    def change_some(self, n: int) -> None:
        for blob in self.rng.sample(self.ids, n):
            key = BlobKey(A, blob)
            what = self.rng.random()
            if what < 0.2:
                self.catalog.forget(key)
            else:
                version = self.catalog.newest(A) + 1
                deleted = what < 0.4
                size = 0 if deleted else self.rng.randrange(1, 10_000)
                sender = self.rng.choice(SENDERS)
                self.catalog.set(key, Entry(version, size, deleted, sender=sender))

    def check(self) -> None:
        self.assertEqual(self.catalog.digest(A), scratch(self.catalog, A))
        for prefix in ["ab", "abcd", "00", "ff", self.ids[0][:2], self.ids[0][:4], "abce"]:
            self.assertEqual(self.catalog.digest(A, prefix), scratch(self.catalog, A, prefix))
        for prefix in ["", "ab"]:
            for byte, digest, count in self.catalog.children(A, prefix):
                self.assertEqual(
                    (digest, count), self.catalog.digest(A, f"{prefix}{byte:02x}"), prefix
                )

    def test_the_kept_tree_is_the_tree_built_from_scratch(self) -> None:
        self.check()  # empty
        for _ in range(6):
            self.change_some(150)
            self.check()

    def test_one_change_changes_the_digests_on_its_path_only(self) -> None:
        self.change_some(300)
        before = {p: self.catalog.digest(A, p) for p in ["", "ab", "abcd", "ac", "abce"]}
        blob = "abcd" + "0" * 60
        self.catalog.set(BlobKey(A, blob), Entry(10**6, 1))
        after = {p: self.catalog.digest(A, p) for p in before}
        self.assertEqual([p for p in before if before[p] != after[p]], ["", "ab", "abcd"])
        self.assertEqual(after["abcd"][1], before["abcd"][1] + 1)
        # A newer version, or a deletion, of the same blob changes them too: a peer
        # holding an older version never compares equal.
        for entry in (Entry(10**6 + 1, 1), Entry(10**6 + 2, 0, deleted=True)):
            self.catalog.set(BlobKey(A, blob), entry)
            again = {p: self.catalog.digest(A, p) for p in before}
            self.assertEqual([p for p in after if after[p] != again[p]], ["", "ab", "abcd"])
            after = again

    def test_entries_of_a_prefix_and_pages(self) -> None:
        self.change_some(400)
        every = [b for b, _ in self.catalog.entries(A)]
        self.assertEqual(every, sorted(every))
        for prefix in ["ab", "abcd", every[0][:4]]:
            self.assertEqual(
                [b for b, _ in self.catalog.entries(A, prefix)],
                [b for b in every if b.startswith(prefix)],
            )
        paged, after = [], None
        while True:
            page, more = self.catalog.page(A, after, 7)
            paged += [b for b, _ in page]
            if not more:
                break
            after = page[-1][0]
        self.assertEqual(paged, every)
        # A listing from just below a prefix starts at its first id.
        for prefix in ["ab", "abcd"]:
            after = merkle.list_after(prefix)
            page, _ = self.catalog.page(A, after, 1)
            self.assertEqual(page[0][0], next(b for b in every if b >= prefix.ljust(64, "0")))
        self.assertIsNone(merkle.list_after("00"))


class BulkLoadTests(SynchronousTestCase):
    def test_the_index_loads_the_same_catalog(self) -> None:
        rng = random.Random(5)
        built = Catalog()
        rows = []
        for i, blob in enumerate(random_ids(rng, 3000) + random_ids(rng, 30, "0001")):
            owner = A if i % 3 else B
            deleted = i % 7 == 0
            entry = Entry(
                2**63 + i if i % 2 else i + 1,  # versions on both sides of the index's offset
                0 if deleted else rng.randrange(1, 1 << 40),
                deleted,
                proof=rng.randbytes(140),
                sender=SENDERS[i % 3],
            )
            built.set(BlobKey(owner, blob), entry)
            rows.append(Row(BlobKey(owner, blob), entry, b"tomb" if deleted else None))
        index_path = self.mktemp()
        index = StoreIndex(Path(index_path), _run)
        index.replace_all(rows)
        loaded = index.load()
        self.assertEqual(loaded.owners(), built.owners())
        for owner in (A, B):
            # Proofs stay in the index: the loaded entries carry none.
            self.assertEqual(
                loaded.entries(owner),
                [
                    (b, Entry(e.version, e.size, e.deleted, sender=e.sender))
                    for b, e in built.entries(owner)
                ],
            )
            self.assertEqual(loaded.digest(owner), built.digest(owner))
            self.assertEqual(loaded.children(owner, ""), built.children(owner, ""))
            self.assertEqual(
                (loaded.newest(owner), loaded.held(owner)), (built.newest(owner), built.held(owner))
            )
        self.assertEqual(loaded.usage(), built.usage())
        for sender in SENDERS:
            self.assertEqual(loaded.sent_by(sender), built.sent_by(sender))
        blob, entry = built.entries(A)[5]
        self.assertEqual(index.proofs(A, blob, blob), {blob: (entry.version, entry.proof)})
        # A loaded catalog changes like any other.
        key = BlobKey(A, blob)
        loaded.set(key, Entry(2**64 - 1, 5, sender="e" * 64))
        built.set(key, Entry(2**64 - 1, 5, sender="e" * 64))
        self.assertEqual(loaded.digest(A), built.digest(A))
        self.assertEqual(loaded.sent_by(entry.sender), built.sent_by(entry.sender))
        self.assertEqual(loaded.digest(A, "ab"), built.digest(A, "ab"))  # some leaf digests
        # Stopped with its catalog, the index keeps it whole for the next start.
        index.closed(loaded)
        again_index = StoreIndex(Path(index_path), _run)
        again = again_index.load()
        for owner in (A, B):
            self.assertEqual(again.entries(owner), loaded.entries(owner))
            self.assertEqual(again.digest(owner), built.digest(owner))
            self.assertEqual(
                (again.newest(owner), again.held(owner)), (loaded.newest(owner), loaded.held(owner))
            )
        self.assertEqual(again.usage(), loaded.usage())
        for sender in [*SENDERS, "e" * 64]:
            self.assertEqual(again.sent_by(sender), loaded.sent_by(sender))
        # Once the node runs, the snapshot is no longer trusted (a crash may follow):
        # the rows are read instead.
        again_index.opened()
        again_index.write_now(Row(key, Entry(1, 1, sender="f" * 64)))
        again_index.closed()
        third = StoreIndex(Path(index_path), _run).load()
        self.assertEqual(third.get(key), Entry(1, 1, sender="f" * 64))
        self.assertEqual(third.sent_by("e" * 64), 0)

    def test_more_senders_than_two_bytes_count(self) -> None:
        # After a crash each owner pays for its blobs, and owner ids cost nothing.
        built, rows = Catalog(), []
        for i in range(70_000):
            key = BlobKey(f"{i:064x}", "e" * 64)
            entry = Entry(i + 1, 10, sender=f"{i:064x}")
            built.set(key, entry)
            rows.append(Row(key, entry))
        index_path = Path(self.mktemp())
        index = StoreIndex(index_path, _run)
        index.replace_all(rows)
        last = BlobKey(f"{69_999:064x}", "e" * 64)
        from_rows = index.load()  # more senders than SQL maps: the slow path
        index.closed(from_rows)
        index = StoreIndex(index_path, _run)
        from_snapshot = index.load()
        for loaded in (from_rows, from_snapshot):
            self.assertEqual(loaded.sent_by(f"{69_999:064x}"), BLOCK)
            self.assertEqual(loaded.get(last), rows[-1].entry)
            self.assertEqual(loaded.usage(), built.usage())
        index.closed()


def frame(mtype: wire.MessageType, body: dict[str, Any]) -> wire.Frame:
    raw = json.dumps(body).encode()
    return wire.Frame(
        mtype, wire.FLAG_REPLY if mtype == wire.MessageType.DIGEST_REPLY else 0, 1, raw
    )


class DigestWireTests(SynchronousTestCase):
    """DIGEST of a prefix and its children: every field bounded, as every message."""

    def test_prefixes_and_children_round_trip(self) -> None:
        for message in (
            wire.Digest(A),
            wire.Digest(A, "ab", children=True),
            wire.Digest(A, "abcd"),
            wire.DigestReply(
                "0" * 64, 3, tuple(wire.DigestChild(b, "1" * 64, b) for b in range(256))
            ),
        ):
            [decoded] = [
                wire.decode(f)
                for f in wire.FrameDecoder().feed(
                    wire.encode(message, 1, reply=isinstance(message, wire.DigestReply))
                )
            ]
            self.assertEqual(decoded, message)
        # The largest reply fits a control body well.
        biggest = wire.DigestReply(
            "0" * 64, 2**61, tuple(wire.DigestChild(b, "f" * 64, 2**61) for b in range(256))
        )
        self.assertLess(len(wire.encode(biggest, 1, reply=True)), wire.MAX_CONTROL_BODY // 2)

    def test_bad_prefixes_and_children_are_refused(self) -> None:
        for prefix in ["a", "abc", "abcdef", "AB", "zz", 12]:
            with self.assertRaises(wire.ProtocolError):
                wire.decode(
                    frame(
                        wire.MessageType.DIGEST, {"owner": A, "prefix": prefix, "children": False}
                    )
                )
        good = [0, "1" * 64, 1]
        for children in (
            [good] * 257,  # more than a node has
            [good, good],  # not ascending
            [[256, "1" * 64, 1]],
            [[0, "1" * 63, 1]],
            [[0, "1" * 64, -1]],
            [[0, "1" * 64]],
        ):
            with self.assertRaises(wire.ProtocolError):
                wire.decode(
                    frame(
                        wire.MessageType.DIGEST_REPLY,
                        {"digest": "0" * 64, "count": 1, "children": children},
                    )
                )
