"""The digest tree of an owner's namespace: anti-entropy proportional to the difference.

Blob ids are uniformly random (HMACs), so their first bytes make a balanced tree
with no rebalancing: the root has up to 256 children, one per first byte of the
blob ids under it, and each of those up to 256 leaves, one per second byte. A
leaf is the entries whose ids start with its two bytes (about 15 at a million
blobs). Each node's digest covers the (blob, version, deleted) entries below it,
so two nodes whose root digests differ find where by asking for the children of
the prefixes that differ, and list only the leaves that differ: a one-blob
difference costs four requests whatever the size of the namespace.

A prefix is 0, 2 or 4 lowercase hex characters: the root, a first-level node, a
leaf. The digests are SHA-256 and the same function builds them from scratch
(`digest_of`) as the catalog keeps them incrementally, which is what tests compare.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

__all__ = [
    "EMPTY",
    "LEAF_HEX",
    "Node",
    "digest_of",
    "leaf_digest",
    "list_after",
    "node_digest",
]

LEAF_HEX = 4  # hex characters of a leaf's prefix: two bytes, two levels below the root
_ENTRY = struct.Struct(">32sQ?")  # a leaf's entry: blob id, version, deleted
_CHILD = struct.Struct(">B32sQ")  # a node's child: its byte, digest, entry count

Node = tuple[bytes, int]  # a digest (32 bytes) and how many entries it covers
EMPTY: Node = (hashlib.sha256().digest(), 0)


def leaf_digest(entries: Iterable[tuple[bytes, int, bool]]) -> bytes:
    """Digest of a leaf's (raw blob id, version, deleted) entries, in blob order."""
    h = hashlib.sha256()
    for entry in entries:
        h.update(_ENTRY.pack(*entry))
    return h.digest()


def node_digest(children: Iterable[tuple[int, Node]]) -> Node:
    """Digest of a node from its non-empty (byte, child) in byte order, and its count."""
    h = hashlib.sha256()
    count = 0
    for byte, (digest, n) in children:
        h.update(_CHILD.pack(byte, digest, n))
        count += n
    return h.digest(), count


def digest_of(entries: Iterable[tuple[str, int, bool]], prefix: str = "") -> Node:
    """The digest of ``prefix`` over (blob, version, deleted) entries in blob order,
    built from scratch (entries outside ``prefix`` are left out)."""
    leaves: dict[str, list[tuple[bytes, int, bool]]] = {}
    for blob, version, deleted in entries:
        if blob.startswith(prefix):
            leaves.setdefault(blob[:LEAF_HEX], []).append((bytes.fromhex(blob), version, deleted))
    nodes: dict[str, list[tuple[int, Node]]] = {}
    for leaf, items in leaves.items():
        nodes.setdefault(leaf[:2], []).append((int(leaf[2:], 16), (leaf_digest(items), len(items))))
    if len(prefix) == LEAF_HEX:
        items = leaves.get(prefix, [])
        return (leaf_digest(items), len(items)) if items else EMPTY
    firsts = [(int(first, 16), node_digest(sorted(kids))) for first, kids in nodes.items()]
    if len(prefix) == 2:
        return next((node for _, node in firsts), EMPTY)
    return node_digest(sorted(firsts)) if firsts else EMPTY


def list_after(prefix: str) -> str | None:
    """The LIST ``after`` that starts a listing at the first blob id within ``prefix``."""
    first = int(prefix.ljust(64, "0"), 16)
    return None if first == 0 else f"{first - 1:064x}"
