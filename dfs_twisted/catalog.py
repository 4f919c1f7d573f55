"""What this node holds, per owner: each blob's version and size, and the tombstones.

An in-memory index over the store, built once at start-up and kept current by
`files.Holdings` as blobs commit and deletions land. Listings, digests, usage
and the next version number come from here, so none of them walks the disk.

It is compact, to hold millions of entries in a few tens of MB: each owner's
entries live in the leaves of its digest tree (merkle.py), one packed bytes
object per two-byte prefix of blob ids, 51 bytes an entry. A change rewrites
one leaf (about 15 entries at a million) and marks its digests stale; they are
computed again when asked for. The owner's proofs (140 bytes each) stay in the
index on disk, except those of changes not yet written there.
Versions order every change within an owner's namespace (the owner is its only
writer): the highest version of a blob, live or deleted, wins everywhere.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import merkle
from .store import BlobKey

__all__ = ["BLOCK", "SNAPSHOT_FORMAT", "Catalog", "Entry", "Snapshot", "charge"]

# What the quota charges a blob or tombstone at the least: one disk block, one
# inode and an entry here. Without it a peer could fill a node with millions of
# tiny blobs or tombstones while staying far under its quota in bytes.
BLOCK = 4096


@dataclass(frozen=True, slots=True)
class Entry:
    version: int
    size: int  # bytes on disk; 0 for a tombstone
    deleted: bool = False
    # The owner's proof of this version: the blob's record (crypto.BlobRecord), or the
    # tombstone's signature; empty for a blob of the old format. Shown in listings.
    proof: bytes = field(default=b"", compare=False, repr=False)
    # The node that sent it here (its quota pays for it); this node's id for its own.
    sender: str = field(default="", compare=False)


def charge(entry: Entry | None) -> int:
    """What ``entry`` counts against its owner's quota."""
    return 0 if entry is None else max(entry.size, BLOCK)


# A leaf's entry: the blob id after the leaf's two bytes, the version as the index
# stores it (offset by 2**63: see database.version_to_db), deleted, size, sender
# (an index into Catalog._senders: a few distinct node ids, not one string each).
# Four bytes of sender: owner ids cost nothing to make, and after a crash each
# owner pays for its blobs, so a peer could make more than 65,535 senders.
_RECORD = struct.Struct(">30sQ?QI")
_SIZE = _RECORD.size
_REST = 30
_OFFSET = 1 << 63
SNAPSHOT_FORMAT = 2  # the record's layout: a snapshot of another is not read

# The same record made by SQLite from an index row, as hex (``sender``: an SQL
# expression of the sender's index), so a load needs no Python work per row.
RECORD_SQL = "substr(blob, 5) || printf('%016x%02x%016x%08x', version, deleted, size, {sender})"


def _hex(node: merkle.Node) -> tuple[str, int]:
    return node[0].hex(), node[1]


def _version(stored: int) -> int:
    return stored ^ _OFFSET


def _find(leaf: bytes, rest: bytes) -> tuple[int, bool]:
    """Where ``rest`` is, or would go, in a sorted leaf: (index, found)."""
    lo, hi = 0, len(leaf) // _SIZE
    while lo < hi:
        mid = (lo + hi) // 2
        at = leaf[mid * _SIZE : mid * _SIZE + _REST]
        if at < rest:
            lo = mid + 1
        elif at > rest:
            hi = mid
        else:
            return mid, True
    return lo, False


@dataclass
class Snapshot:
    """The catalog in a form quick to write and read: each sender and what it is
    charged, each owner's totals, and every leaf (owner, prefix, records, digest)."""

    totals: dict[str, Any]
    leaves: Iterable[tuple[str, int, bytes, bytes | None]]


class _Namespace:
    __slots__ = (
        "_firsts",
        "_order",
        "_root",
        "changes",
        "charged",
        "count",
        "digests",
        "leaves",
        "newest",
        "nodes",
        "stored",
    )

    def __init__(self) -> None:
        self.leaves: dict[int, bytes] = {}  # two-byte prefix -> its entries, sorted
        self.count = 0
        self.changes = 0  # how many times an entry was set or removed since start-up
        self.stored = 0  # bytes of live blobs
        self.charged = 0  # what the quota counts: every entry, at least a block
        # Highest version ever set: it never goes down, even when an entry is forgotten.
        self.newest = 0
        self._order: list[int] | None = None  # sorted prefixes, rebuilt after a leaf comes or goes
        self._firsts: list[int] | None = None  # their first bytes, likewise
        self.digests: dict[int, bytes] = {}  # leaf digests still valid
        self.nodes: dict[int, merkle.Node] = {}  # first-level digests still valid
        self._root: merkle.Node | None = None

    def order(self) -> list[int]:
        if self._order is None:
            self._firsts = None
            self._order = sorted(self.leaves)
        return self._order

    def changed(self, prefix: int, leaf: bytes) -> None:
        if leaf:
            if prefix not in self.leaves:
                self._order = None
            self.leaves[prefix] = leaf
        elif self.leaves.pop(prefix, None) is not None:
            self._order = None
        self.digests.pop(prefix, None)
        self.nodes.pop(prefix >> 8, None)
        self._root = None

    # -- the digest tree

    def leaf(self, prefix: int) -> merkle.Node:
        leaf = self.leaves.get(prefix)
        if leaf is None:
            return merkle.EMPTY
        digest = self.digests.get(prefix)
        if digest is None:
            head = prefix.to_bytes(2, "big")
            digest = merkle.leaf_digest(
                (head + rest, _version(v), d) for rest, v, d, _, _ in _RECORD.iter_unpack(leaf)
            )
            self.digests[prefix] = digest
        return digest, len(leaf) // _SIZE

    def leaves_under(self, first: int) -> list[int]:
        order = self.order()
        lo = bisect.bisect_left(order, first << 8)
        hi = bisect.bisect_left(order, (first + 1) << 8)
        return order[lo:hi]

    def node(self, first: int) -> merkle.Node:
        node = self.nodes.get(first)
        if node is None:
            node = merkle.node_digest((p & 0xFF, self.leaf(p)) for p in self.leaves_under(first))
            self.nodes[first] = node
        return node

    def firsts(self) -> list[int]:
        order = self.order()  # first: a new order forgets the first bytes
        if self._firsts is None:
            self._firsts = sorted({p >> 8 for p in order})
        return self._firsts

    def root(self) -> merkle.Node:
        if self._root is None:
            self._root = merkle.node_digest((f, self.node(f)) for f in self.firsts())
        return self._root


class Catalog:
    """Blob versions per owner; the caller keeps it in step with the store."""

    def __init__(self) -> None:
        self._owners: dict[str, _Namespace] = {}
        # What each sender's entries count against its quota, whoever owns them.
        self._sent: dict[str, int] = {}
        self._senders: list[str] = []
        self._sender_index: dict[str, int] = {}
        # Proofs of changes made since start-up, until their rows are in the index
        # (`settled`); the others are read from the index when a listing needs them.
        self._proofs: dict[BlobKey, tuple[int, bytes]] = {}

    def _sender(self, sender: str) -> int:
        index = self._sender_index.get(sender)
        if index is None:
            index = self._sender_index[sender] = len(self._senders)
            self._senders.append(sender)
        return index

    def _entry(self, key: BlobKey, record: tuple[bytes, int, bool, int, int]) -> Entry:
        _, stored, deleted, size, sender = record
        version = _version(stored)
        fresh = self._proofs.get(key) if self._proofs else None
        proof = fresh[1] if fresh is not None and fresh[0] == version else b""
        return Entry(version, size, deleted, proof=proof, sender=self._senders[sender])

    def _lookup(self, key: BlobKey) -> tuple[bytes, int, bool, int, int] | None:
        ns = self._owners.get(key.owner)
        if ns is None:
            return None
        raw = bytes.fromhex(key.blob)
        leaf = ns.leaves.get(int.from_bytes(raw[:2], "big"))
        if leaf is None:
            return None
        i, found = _find(leaf, raw[2:])
        return _RECORD.unpack_from(leaf, i * _SIZE) if found else None

    def get(self, key: BlobKey) -> Entry | None:
        record = self._lookup(key)
        return None if record is None else self._entry(key, record)

    def is_newer(self, key: BlobKey, version: int) -> bool:
        """True when ``version`` would replace what is held (nothing, or older)."""
        record = self._lookup(key)
        return record is None or version > _version(record[1])

    def set(self, key: BlobKey, entry: Entry) -> None:
        self._put(key, entry)
        if entry.proof:
            self._proofs[key] = (entry.version, entry.proof)

    def restore(
        self,
        sent: list[tuple[str, int]],
        namespaces: Iterable[tuple[str, int, int, int, int]],
        leaves: Iterable[tuple[str, int, bytes]],
    ) -> None:
        """Load an empty catalog from the index in bulk: each sender and what it is
        charged (the order gives the senders' indexes in records), each owner's
        (owner, count, stored, charged, newest) and its leaves as (owner, prefix,
        records, as ``RECORD_SQL`` makes them in hex). No Python work per entry:
        a million entries load in about a second."""
        assert not self._owners, "restore() fills an empty catalog"
        for sender, charged in sent:
            self._sender(sender)
            self._sent[sender] = charged
        for owner, count, stored, charged, newest in namespaces:
            ns = self._owners[owner] = _Namespace()
            ns.count, ns.stored, ns.charged, ns.newest = count, stored, charged, newest
        for owner, prefix, leaf in leaves:
            rests = [leaf[i : i + _REST] for i in range(0, len(leaf), _SIZE)]
            if any(a >= b for a, b in itertools.pairwise(rests)):
                # SQLite does not promise group_concat's order: put the leaf in order.
                leaf = b"".join(_RECORD.pack(*r) for r in sorted(_RECORD.iter_unpack(leaf)))
            self._owners[owner].leaves[prefix] = leaf

    def snapshot(self) -> Snapshot:
        """The whole catalog as it is, to load again in one read (its proofs are in
        the index; those not written there yet would be lost: take it once every
        write is done)."""
        totals = {
            "format": SNAPSHOT_FORMAT,
            "senders": [[s, self._sent.get(s, 0)] for s in self._senders],
            "owners": [
                [owner, ns.count, ns.stored, ns.charged, ns.newest]
                for owner, ns in self._owners.items()
            ],
            # First-level digests too: 256 an owner, a third of a second to compute.
            "nodes": [
                [owner, first, *_hex(ns.node(first))]
                for owner, ns in self._owners.items()
                for first in ns.firsts()
            ],
        }
        # Every leaf's digest too (a second at a million entries, at the stop):
        # the first comparison after the next start needs them all.
        leaves = [
            (owner, prefix, leaf, ns.leaf(prefix)[0])
            for owner, ns in self._owners.items()
            for prefix, leaf in ns.leaves.items()
        ]
        return Snapshot(totals, leaves)

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> Catalog:
        catalog = cls()
        for sender, charged in snapshot.totals["senders"]:
            catalog._sender(sender)
            if charged:
                catalog._sent[sender] = charged
        for owner, count, stored, charged, newest in snapshot.totals["owners"]:
            ns = catalog._owners[owner] = _Namespace()
            ns.count, ns.stored, ns.charged, ns.newest = count, stored, charged, newest
        for owner, prefix, leaf, digest in snapshot.leaves:
            ns = catalog._owners[owner]
            ns.leaves[prefix] = leaf
            if digest is not None:
                ns.digests[prefix] = digest
        for owner, first, digest, count in snapshot.totals.get("nodes", []):
            catalog._owners[owner].nodes[first] = (bytes.fromhex(digest), count)
        return catalog

    def settled(self, key: BlobKey, version: int) -> None:
        """The index holds ``key``'s row at ``version``: its proof is read from there."""
        fresh = self._proofs.get(key)
        if fresh is not None and fresh[0] == version:
            del self._proofs[key]

    def settled_all(self) -> None:
        """Every row is in the index (it was just written whole)."""
        self._proofs.clear()

    def _put(self, key: BlobKey, entry: Entry | None) -> None:
        """Set or (None) remove ``key``'s entry: one leaf rewritten."""
        ns = self._owners.get(key.owner)
        if ns is None:
            if entry is None:
                return
            ns = self._owners[key.owner] = _Namespace()
        raw = bytes.fromhex(key.blob)
        prefix, rest = int.from_bytes(raw[:2], "big"), raw[2:]
        leaf = ns.leaves.get(prefix, b"")
        i, found = _find(leaf, rest)
        if found:
            old = _RECORD.unpack_from(leaf, i * _SIZE)
            ns.count -= 1
            ns.stored -= old[3]
            self._uncharge(ns, old[3], old[4])
            self._proofs.pop(key, None)
        elif entry is None:
            return
        new = b""
        if entry is not None:
            new = _RECORD.pack(
                rest,
                entry.version ^ _OFFSET,
                entry.deleted,
                entry.size,
                self._sender(entry.sender),
            )
            ns.count += 1
            ns.stored += entry.size
            ns.newest = max(ns.newest, entry.version)
            cost = charge(entry)
            ns.charged += cost
            self._sent[entry.sender] = self._sent.get(entry.sender, 0) + cost
        end = (i + 1) * _SIZE if found else i * _SIZE
        ns.changes += 1
        ns.changed(prefix, leaf[: i * _SIZE] + new + leaf[end:])

    def _uncharge(self, ns: _Namespace, size: int, sender_index: int) -> None:
        sender = self._senders[sender_index]
        cost = max(size, BLOCK)
        ns.charged -= cost
        left = self._sent[sender] - cost
        if left:
            self._sent[sender] = left
        else:
            del self._sent[sender]

    def forget(self, key: BlobKey) -> None:
        """The blob is gone without a tombstone (damaged, dropped)."""
        self._put(key, None)

    def sent_by(self, sender: str) -> int:
        """What the entries ``sender`` sent here count against its quota."""
        return self._sent.get(sender, 0)

    def owners(self) -> list[str]:
        return sorted(owner for owner, ns in self._owners.items() if ns.count)

    def _records(
        self, owner: str, start: int = 0, stop: int = 1 << 16
    ) -> Iterator[tuple[str, Entry]]:
        ns = self._owners.get(owner)
        if ns is None:
            return
        order = ns.order()
        for prefix in order[bisect.bisect_left(order, start) : bisect.bisect_left(order, stop)]:
            head = prefix.to_bytes(2, "big")
            for record in _RECORD.iter_unpack(ns.leaves[prefix]):
                blob = (head + record[0]).hex()
                yield blob, self._entry(BlobKey(owner, blob), record)

    def entries(self, owner: str, prefix: str = "") -> list[tuple[str, Entry]]:
        """(blob, entry) in blob order, tombstones included; with ``prefix`` (0, 2
        or 4 hex) only the blob ids that start with it."""
        if not prefix:
            return list(self._records(owner))
        shift = 8 * (2 - len(prefix) // 2)
        start = int(prefix, 16) << shift
        return list(self._records(owner, start, start + (1 << shift)))

    def leaves(self, owner: str) -> list[str]:
        """The prefixes (4 hex) of ``owner``'s non-empty leaves, in order."""
        ns = self._owners.get(owner)
        return [] if ns is None else [f"{p:04x}" for p in ns.order()]

    def changes(self, owner: str) -> int:
        """A number that goes up at every change of ``owner``'s entries."""
        ns = self._owners.get(owner)
        return 0 if ns is None else ns.changes

    def count(self, owner: str) -> int:
        ns = self._owners.get(owner)
        return 0 if ns is None else ns.count

    def live(self, owner: str) -> list[str]:
        return [blob for blob, entry in self._records(owner) if not entry.deleted]

    def page(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[tuple[str, Entry]], bool]:
        """Up to ``limit`` entries with blob > ``after``, and whether more follow."""
        start = 0 if after is None else int(after[: merkle.LEAF_HEX], 16)
        chosen: list[tuple[str, Entry]] = []
        for blob, entry in self._records(owner, start):
            if after is not None and blob <= after:
                continue
            if len(chosen) == limit:
                return chosen, True
            chosen.append((blob, entry))
        return chosen, False

    # -- the digest tree (merkle.py)

    def digest(self, owner: str, prefix: str = "") -> tuple[str, int]:
        """The digest of ``owner``'s entries whose blob ids start with ``prefix``
        (0, 2 or 4 hex), and their count. Two nodes with the same digest for a prefix
        hold the same versions there: the cheap first step of anti-entropy."""
        ns = self._owners.get(owner)
        if ns is None:
            node = merkle.EMPTY
        elif not prefix:
            node = ns.root()
        elif len(prefix) == 2:
            node = ns.node(int(prefix, 16))
        else:
            node = ns.leaf(int(prefix, 16))
        return node[0].hex(), node[1]

    def children(self, owner: str, prefix: str) -> list[tuple[int, str, int]]:
        """(byte, digest, count) of each non-empty child of the root ("") or of a
        first-level node (2 hex); a leaf's children are its entries (LIST them)."""
        ns = self._owners.get(owner)
        if ns is None or len(prefix) > 2:
            return []
        if not prefix:
            nodes = [(f, ns.node(f)) for f in ns.firsts()]
        else:
            nodes = [(p & 0xFF, ns.leaf(p)) for p in ns.leaves_under(int(prefix, 16))]
        return [(byte, digest.hex(), n) for byte, (digest, n) in nodes]

    def newest(self, owner: str) -> int:
        """The highest version ever set in ``owner``'s namespace (a put's starts above it)."""
        ns = self._owners.get(owner)
        return 0 if ns is None else ns.newest

    def usage(self) -> dict[str, int]:
        """Bytes of live blobs per owner."""
        return {owner: ns.stored for owner, ns in sorted(self._owners.items()) if ns.count}

    def held(self, owner: str) -> int:
        """What ``owner``'s blobs and tombstones here count against its quota."""
        ns = self._owners.get(owner)
        return 0 if ns is None else ns.charged
