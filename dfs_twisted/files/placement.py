"""Which peers should hold each of this org's blobs, and which do.

With ``--replicas all`` (the default) every peer this node knows holds every
blob, as in the seed's story. With ``--replicas N`` each blob has N copies, this
node's and those of N-1 peers chosen by rendezvous (highest-random-weight)
hashing of the blob id and the peer's node id: every node ranks the peers the
same way for a blob, and a peer that joins or leaves moves only the blobs it
ranks first for, not everyone's.

A peer stays among a blob's targets while it is connected or has been away for
less than ``repair_after``; one away longer, or one that refused the blob for
want of space, is passed over and the next peer in rank order takes its place
(the owner's sync then sends it the blob). When the peer passed over is back and
every target holds the blob, the copies beyond the targets are released: the
owner signs a release, and only a release signed by the owner makes a holder
drop a replica.

With ``--erasure K-of-N`` each blob is cut into N shares (erasure.py), each a
blob of its own: share i goes to the i-th peer in rank order among every peer
met, and a peer passed over hands only its own share to the next peer in rank
not holding another (it gets it back when it returns).

What a peer holds of this namespace is learnt from what it acknowledged (a put, a
sync), from its listings (when anti-entropy compares) and from audits; a peer
that fails an audit of a version is not counted as holding it, and a peer whose
session comes up again holds nothing until it has listed again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from blake3 import blake3

from ..crypto import share_id
from ..erasure import Erasure
from ..wire import Code

__all__ = ["REFUSAL_MEMORY", "ROOM_CODES", "Placement", "Redundancy", "rank"]

REFUSAL_MEMORY = 3600.0  # seconds a peer that refused a blob for space is passed over
ROOM_CODES = frozenset({Code.QUOTA, Code.DISK_FULL})  # the refusals that pass a peer over


def rank(blob: str, peers: Iterable[str]) -> list[str]:
    """``peers`` (node ids) in rendezvous order for ``blob``: the first are its holders."""
    blob_bytes = bytes.fromhex(blob)

    def weight(peer: str) -> bytes:
        return blake3(blob_bytes + bytes.fromhex(peer)).digest()

    return sorted(peers, key=weight, reverse=True)


@dataclass(frozen=True)
class Redundancy:
    """How many copies of each blob there are, the owner's included (None: one on
    every peer), or, with ``erasure``, how many shares are made and how many
    rebuild a file."""

    replicas: int | None = None
    erasure: Erasure | None = None

    @property
    def peers(self) -> int | None:
        """How many peers hold a copy (None: every peer)."""
        return None if self.replicas is None else self.replicas - 1

    def __str__(self) -> str:
        if self.erasure is not None:
            return str(self.erasure)
        return "all" if self.replicas is None else str(self.replicas)


class Placement:
    """The targets of each of this org's blobs, and the peers known to hold it."""

    def __init__(
        self,
        redundancy: Redundancy,
        known: Callable[[], dict[str, float | None]],
        repair_after: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``known()``: every peer node met, with when it was last seen (None: now)."""
        self.redundancy = redundancy
        self.repair_after = repair_after
        self._known = known
        self._clock = clock
        self._held: dict[str, dict[str, int]] = {}  # blob -> peer -> version it holds
        self._refused: dict[tuple[str, str], float] = {}  # (peer, blob) -> when
        self.refusals = 0  # goes up at every refusal: the targets may have changed
        # (peer, blob) -> the version it failed an audit of: its listing of that
        # version is not believed, until it acknowledges a new transfer or passes.
        self._failed: dict[tuple[str, str], int] = {}
        # Goes up at every change of what peers are known to hold: totals computed
        # from it (the page's, the metrics') are kept until it moves.
        self.generation = 0

    @property
    def everywhere(self) -> bool:
        return self.redundancy.replicas is None and self.redundancy.erasure is None

    @property
    def erasure(self) -> Erasure | None:
        return self.redundancy.erasure

    def available(self) -> list[str]:
        """Peers that may be chosen now: connected, or away for less than repair_after
        (a walk over every peer met: a caller placing many blobs asks once)."""
        now = self._clock()
        return [
            peer
            for peer, last_seen in self._known().items()
            if last_seen is None or now - last_seen < self.repair_after
        ]

    def _passed_over(self, peer: str, blob: str, now: float) -> bool:
        refused = self._refused.get((peer, blob))
        return refused is not None and now - refused < REFUSAL_MEMORY

    def targets(self, blob: str, available: list[str] | None = None) -> list[str]:
        """The peers that should hold a copy of ``blob`` now, in rank order (among
        ``available``, by default the peers available now). With erasure coding,
        `slots` says which peer holds which share instead."""
        if available is None:
            available = self.available()
        wanted = self.redundancy.peers
        if wanted is None:
            return available
        now = self._clock()
        return [p for p in rank(blob, available) if not self._passed_over(p, blob, now)][:wanted]

    def slots(self, blob: str, available: list[str] | None = None) -> list[str | None]:
        """With erasure, the peer that should hold each share of ``blob`` (None: no
        peer left for it). Share i goes to the i-th peer in rank order among every
        peer met, so that a peer away or full moves only its own share: that one
        goes to the next peer in rank order not holding another (and comes back
        when the peer does)."""
        assert self.erasure is not None
        if available is None:
            available = self.available()
        usable = set(available)
        now = self._clock()
        ranked = rank(blob, self._known())
        primary = ranked[: self.erasure.n]
        spares = [p for p in ranked[self.erasure.n :] if p in usable]
        chosen: list[str | None] = []
        for index in range(self.erasure.n):
            share = share_id(blob, index)
            peer = primary[index] if index < len(primary) else None
            if peer is None or peer not in usable or self._passed_over(peer, share, now):
                peer = next((p for p in spares if not self._passed_over(p, share, now)), None)
                if peer is not None:
                    spares.remove(peer)
            chosen.append(peer)
        return chosen

    def share_of(self, peer: str, blob: str, available: list[str] | None = None) -> int | None:
        """With erasure, the index of the share of ``blob`` ``peer`` should hold, if any."""
        slots = self.slots(blob, available)
        return slots.index(peer) if peer in slots else None

    def wanted(self) -> int:
        """How many peer copies (or shares) each blob should have."""
        if self.erasure is not None:
            return self.erasure.n
        if self.redundancy.peers is not None:
            return self.redundancy.peers
        return len(self.available())

    def is_target(self, peer: str, blob: str, available: list[str] | None = None) -> bool:
        return self.everywhere or peer in self.targets(blob, available)

    # -- what peers hold

    def holds(self, peer: str, blob: str, version: int) -> None:
        """``peer`` holds ``version`` of ``blob`` (it acknowledged it, or proved it)."""
        holders = self._held.setdefault(blob, {})
        if holders.get(peer) != version:
            holders[peer] = version
            self.generation += 1
        self._refused.pop((peer, blob), None)
        self._failed.pop((peer, blob), None)

    def failed(self, peer: str, blob: str, version: int) -> None:
        """``peer`` failed an audit of ``version`` of ``blob``: not held there, whatever
        its listings say, until it acknowledges a new copy or passes an audit."""
        self.lost(peer, blob)
        self._failed[(peer, blob)] = version

    def lost(self, peer: str, blob: str) -> None:
        """``peer`` no longer holds ``blob`` (released it, or failed an audit)."""
        holders = self._held.get(blob)
        if holders is not None and peer in holders:
            del holders[peer]
            self.generation += 1
            if not holders:
                del self._held[blob]

    def forget_peer(self, peer: str) -> None:
        """``peer`` came back: what it held when it left may be gone (a lost disk), so
        nothing counts as held there until it lists it again (no release of a copy
        elsewhere is made on the strength of a copy that no longer exists)."""
        for blob in [b for b, holders in self._held.items() if peer in holders]:
            self.lost(peer, blob)

    def refused(self, peer: str, blob: str) -> None:
        """``peer`` refused ``blob`` for want of room: the next peer takes its place."""
        self._refused[(peer, blob)] = self._clock()
        self.refusals += 1

    def forget(self, blob: str) -> None:
        """The blob is deleted: nobody is expected to hold it any more."""
        if self._held.pop(blob, None) is not None:
            self.generation += 1

    def learn(self, peer: str, held: dict[str, int], prefixes: Sequence[str] = ("",)) -> None:
        """``peer`` listed this namespace (or the blob ids that start with one of
        ``prefixes``): exactly these blobs there, at these versions."""
        within = tuple(prefixes)
        for blob, holders in list(self._held.items()):
            if peer in holders and blob not in held and blob.startswith(within):
                self.lost(peer, blob)
        for blob, version in held.items():
            if self._failed.get((peer, blob)) != version:
                self.holds(peer, blob, version)

    def holders(self, blob: str, version: int) -> list[str]:
        """The peers known to hold exactly ``version`` of ``blob``."""
        return [p for p, v in self._held.get(blob, {}).items() if v == version]

    def copies(self, blob: str, version: int) -> int:
        """Peer copies of ``version`` of a file known: replicas, or (with erasure)
        its distinct shares held."""
        if self.erasure is None:
            return len(self.holders(blob, version))
        return sum(
            bool(self.holders(share_id(blob, index), version)) for index in range(self.erasure.n)
        )

    def under_replicated(self, files: Iterable[tuple[str, int]]) -> int:
        """How many of ``files`` (blob, version) have fewer peer copies than wanted."""
        wanted = self.wanted()
        return sum(self.copies(blob, version) < wanted for blob, version in files)

    def held_by(self, sizes: dict[str, tuple[int, int]]) -> dict[str, int]:
        """Bytes of this org's blobs each peer holds, from ``sizes`` (blob -> version,
        size) of the current versions (with erasure: the size of a share's contents)."""
        held: dict[str, int] = {}
        for blob, (version, size) in sizes.items():
            if self.erasure is None:
                parts = [blob]
            else:
                parts = [share_id(blob, index) for index in range(self.erasure.n)]
                size = self.erasure.share_size(size)
            for part in parts:
                for peer, v in self._held.get(part, {}).items():
                    if v == version:
                        held[peer] = held.get(peer, 0) + size
        return held

    def surplus(self, blob: str, version: int, available: list[str] | None = None) -> list[str]:
        """Holders beyond the targets, once every target holds ``version``: to release.
        With erasure, ``blob`` is a share's id; `share_placed` answers for shares."""
        if self.everywhere or self.erasure is not None:
            return []
        targets = self.targets(blob, available)
        holders = self.holders(blob, version)
        if len(targets) < (self.redundancy.peers or 0) or not set(targets) <= set(holders):
            return []  # not fully placed yet: an extra copy is still worth keeping
        return [p for p in holders if p not in targets]

    def share_placed(
        self, blob: str, index: int, version: int, available: list[str] | None = None
    ) -> str | None:
        """The peer whose slot share ``index`` of ``blob`` is, if it holds ``version``
        of it (any other copy of that share is then surplus: to release)."""
        slot = self.slots(blob, available)[index]
        return slot if slot in self.holders(share_id(blob, index), version) else None
