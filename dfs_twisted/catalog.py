"""What this node holds, per owner: each blob's version and size, and the tombstones.

An in-memory index over the store, built once at start-up and kept current by
`files.Holdings` as blobs commit and deletions land. Listings, digests, usage
and the next version number come from here, so none of them walks the disk.
Versions order every change within an owner's namespace (the owner is its only
writer): the highest version of a blob, live or deleted, wins everywhere.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from .store import BlobKey

__all__ = ["BLOCK", "Catalog", "Entry", "charge"]

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


def digest_of(entries: Iterable[tuple[str, Entry]]) -> tuple[str, int]:
    """SHA-256 over (blob, version, deleted) entries in blob order, and their count."""
    h = hashlib.sha256()
    count = 0
    for blob, entry in entries:
        h.update(f"{blob} {entry.version} {int(entry.deleted)}\n".encode("ascii"))
        count += 1
    return h.hexdigest(), count


def charge(entry: Entry | None) -> int:
    """What ``entry`` counts against its owner's quota."""
    return 0 if entry is None else max(entry.size, BLOCK)


class _Namespace:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.stored = 0  # bytes of live blobs
        self.charged = 0  # what the quota counts: every entry, at least a block
        # Highest version ever set: it never goes down, even when an entry is forgotten.
        self.newest = 0
        self._sorted: list[str] | None = None  # blob ids, rebuilt after a change
        self.digest: tuple[str, int] | None = None  # likewise

    def sorted_ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.entries)
        return self._sorted

    def put(self, blob: str, entry: Entry) -> None:
        self.digest = None
        old = self.entries.get(blob)
        if old is None:
            self._sorted = None
        else:
            self.stored -= old.size
            self.charged -= charge(old)
        self.entries[blob] = entry
        self.newest = max(self.newest, entry.version)
        self.stored += entry.size
        self.charged += charge(entry)

    def pop(self, blob: str) -> None:
        old = self.entries.pop(blob, None)
        if old is not None:
            self.stored -= old.size
            self.charged -= charge(old)
            self._sorted = None
            self.digest = None


class Catalog:
    """Blob versions per owner; the caller keeps it in step with the store."""

    def __init__(self) -> None:
        self._owners: dict[str, _Namespace] = {}
        # What each sender's entries count against its quota, whoever owns them.
        self._sent: dict[str, int] = {}

    def get(self, key: BlobKey) -> Entry | None:
        ns = self._owners.get(key.owner)
        return None if ns is None else ns.entries.get(key.blob)

    def is_newer(self, key: BlobKey, version: int) -> bool:
        """True when ``version`` would replace what is held (nothing, or older)."""
        held = self.get(key)
        return held is None or version > held.version

    def set(self, key: BlobKey, entry: Entry) -> None:
        self._uncharge(self.get(key))
        self._owners.setdefault(key.owner, _Namespace()).put(key.blob, entry)
        self._sent[entry.sender] = self._sent.get(entry.sender, 0) + charge(entry)

    def forget(self, key: BlobKey) -> None:
        """The blob is gone without a tombstone (damaged, dropped)."""
        ns = self._owners.get(key.owner)
        if ns is not None:
            self._uncharge(ns.entries.get(key.blob))
            ns.pop(key.blob)

    def _uncharge(self, entry: Entry | None) -> None:
        if entry is not None:
            left = self._sent[entry.sender] - charge(entry)
            if left:
                self._sent[entry.sender] = left
            else:
                del self._sent[entry.sender]

    def sent_by(self, sender: str) -> int:
        """What the entries ``sender`` sent here count against its quota."""
        return self._sent.get(sender, 0)

    def owners(self) -> list[str]:
        return sorted(owner for owner, ns in self._owners.items() if ns.entries)

    def entries(self, owner: str) -> Iterable[tuple[str, Entry]]:
        """(blob, entry) in blob order, tombstones included."""
        ns = self._owners.get(owner)
        if ns is None:
            return []
        return [(blob, ns.entries[blob]) for blob in ns.sorted_ids()]

    def live(self, owner: str) -> list[str]:
        return [blob for blob, entry in self.entries(owner) if not entry.deleted]

    def page(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[tuple[str, Entry]], bool]:
        """Up to ``limit`` entries with blob > ``after``, and whether more follow."""
        ns = self._owners.get(owner)
        if ns is None:
            return [], False
        ids = ns.sorted_ids()
        start = 0 if after is None else bisect.bisect_right(ids, after)
        chosen = ids[start : start + limit]
        return [(blob, ns.entries[blob]) for blob in chosen], start + limit < len(ids)

    def digest(self, owner: str) -> tuple[str, int]:
        """SHA-256 over the sorted (blob, version, deleted) entries, and their count.

        Two nodes with the same digest for an owner hold the same versions:
        the cheap first step of anti-entropy.
        """
        ns = self._owners.get(owner)
        if ns is not None and ns.digest is not None:
            return ns.digest  # kept until the namespace changes: peers ask every minute
        digest = digest_of(self.entries(owner))
        if ns is not None:
            ns.digest = digest
        return digest

    def newest(self, owner: str) -> int:
        """The highest version ever set in ``owner``'s namespace (a put's starts above it)."""
        ns = self._owners.get(owner)
        return 0 if ns is None else ns.newest

    def usage(self) -> dict[str, int]:
        """Bytes of live blobs per owner."""
        return {owner: ns.stored for owner, ns in sorted(self._owners.items()) if ns.entries}

    def held(self, owner: str) -> int:
        """What ``owner``'s blobs and tombstones here count against its quota."""
        ns = self._owners.get(owner)
        return 0 if ns is None else ns.charged
