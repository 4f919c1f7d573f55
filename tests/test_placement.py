"""Placement with --replicas N: rendezvous ranking, repair, surplus released by the owner.

Pure tests of `files.placement`, then nodes linked in memory (tests/loopback.py)
going through put, a holder away past --repair-after, its return, and releases
that only the owner can sign.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.crypto import Release
from dfs_twisted.files.placement import Placement, Redundancy, rank
from dfs_twisted.session import RemoteError, release_message
from dfs_twisted.store import BlobKey
from tests.loopback import MemoryNode, link, outcome, settled

pytestmark = pytest.mark.unit

PEERS = [os.urandom(32).hex() for _ in range(12)]
BLOBS = [os.urandom(32).hex() for _ in range(400)]


class RankTests(SynchronousTestCase):
    def test_every_node_ranks_the_same_way(self) -> None:
        for blob in BLOBS[:20]:
            self.assertEqual(rank(blob, PEERS), rank(blob, list(reversed(PEERS))))

    def test_a_new_peer_moves_only_the_blobs_it_ranks_high_for(self) -> None:
        newcomer = os.urandom(32).hex()
        moved = 0
        for blob in BLOBS:
            before = rank(blob, PEERS)[:3]
            after = rank(blob, [*PEERS, newcomer])[:3]
            if before != after:
                moved += 1
                # Only by the newcomer taking one place; the others keep their order.
                self.assertIn(newcomer, after)
                self.assertEqual([p for p in after if p != newcomer], before[:2])
        # About 3 in 13 blobs have the newcomer among their top three: never most.
        self.assertGreater(moved, 0)
        self.assertLess(moved, len(BLOBS) // 2)

    def test_blobs_spread_over_every_peer(self) -> None:
        firsts = {rank(blob, PEERS)[0] for blob in BLOBS}
        self.assertEqual(firsts, set(PEERS))


class PlacementTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 10_000.0
        self.seen: dict[str, float | None] = dict.fromkeys(PEERS[:5])
        self.placement = Placement(
            Redundancy(3), lambda: self.seen, repair_after=3600, clock=lambda: self.now
        )

    def test_targets_pass_over_a_peer_away_too_long_or_out_of_room(self) -> None:
        blob = BLOBS[0]
        first, second, third, *_ = rank(blob, PEERS[:5])
        self.assertEqual(self.placement.targets(blob), [first, second])
        self.seen[first] = self.now - 60  # away a minute: still its place
        self.assertEqual(self.placement.targets(blob), [first, second])
        self.seen[first] = self.now - 3601
        self.assertEqual(self.placement.targets(blob), [second, third])
        self.placement.refused(second, blob)
        self.assertEqual(self.placement.targets(blob)[0], third)

    def test_surplus_only_once_every_target_holds_the_version(self) -> None:
        blob = BLOBS[1]
        first, second, third, *_ = rank(blob, PEERS[:5])
        self.placement.holds(third, blob, 7)  # placed there while `first` was away
        self.placement.holds(second, blob, 7)
        self.assertEqual(self.placement.surplus(blob, 7), [])  # `first` lacks it yet
        self.placement.holds(first, blob, 6)
        self.assertEqual(self.placement.surplus(blob, 7), [])  # an older version
        self.placement.holds(first, blob, 7)
        self.assertEqual(self.placement.surplus(blob, 7), [third])

    def test_all_means_every_available_peer_and_no_surplus(self) -> None:
        everywhere = Placement(Redundancy(None), lambda: self.seen, clock=lambda: self.now)
        self.assertEqual(sorted(everywhere.targets(BLOBS[2])), sorted(PEERS[:5]))
        self.assertEqual(everywhere.wanted(), 5)
        for peer in PEERS[:5]:
            everywhere.holds(peer, BLOBS[2], 1)
        self.assertEqual(everywhere.surplus(BLOBS[2], 1), [])
        self.assertEqual(everywhere.under_replicated([(BLOBS[2], 1), (BLOBS[3], 1)]), 1)


class PlacedNetworkTests(SynchronousTestCase):
    """An owner and four peers, each file here and on one peer (--replicas 2)."""

    def setUp(self) -> None:
        self.owner = self.node("owner", replicas=2)
        self.peers = [self.node(f"p{i}") for i in range(4)]
        self.links = {p.node_id: link(self.owner, p) for p in self.peers}

    def node(self, org: str, replicas: int | None = None) -> MemoryNode:
        node = MemoryNode(Path(self.mktemp()), org, replicas=replicas)
        self.addCleanup(node.close)
        return node

    def holders(self, blob: str) -> list[str]:
        key = BlobKey(self.owner.node_id, blob)
        return [p.node_id for p in self.peers if p.holdings.held(key) is not None]

    def by_id(self, node_id: str) -> MemoryNode:
        return next(p for p in self.peers if p.node_id == node_id)

    def test_put_goes_to_the_first_peer_in_rank_order_only(self) -> None:
        for i in range(6):
            result = settled(self.owner.put(f"f{i}", os.urandom(5000)))
            self.assertEqual(result.replicas, 2)
            first = rank(result.blob, [p.node_id for p in self.peers])[0]
            self.assertEqual(self.holders(result.blob), [first])

    def test_a_holder_away_too_long_is_replaced_and_released_when_back(self) -> None:
        result = settled(self.owner.put("f", os.urandom(5000)))
        blob = result.blob
        first, second = rank(blob, [p.node_id for p in self.peers])[:2]
        at_owner, _ = self.links[first]
        at_owner.close("gone", at=self.owner.clock.seconds())
        self.owner.clock.advance(60)
        for session in self.owner.live():
            settled(self.owner.sync.catch_up(session))
        self.assertEqual(self.holders(blob), [first])  # away a minute: nothing moves
        self.owner.clock.advance(3600)
        for session in self.owner.live():
            settled(self.owner.sync.catch_up(session))
        self.assertEqual(sorted(self.holders(blob)), sorted([first, second]))
        # Back: the first in rank is a target again and holds the blob; the copy
        # made while it was away is released, by the owner's signature only.
        self.links[first] = link(self.owner, self.by_id(first))
        for session in self.owner.live():
            settled(self.owner.sync.catch_up(session))
        self.assertEqual(self.holders(blob), [first])
        mine = self.owner.holdings.held(BlobKey(self.owner.node_id, blob))
        assert mine is not None
        self.assertEqual(self.owner.placement.under_replicated([(blob, mine.version)]), 0)

    def test_only_the_owners_release_for_this_holder_drops_a_replica(self) -> None:
        result = settled(self.owner.put("f", os.urandom(5000)))
        blob = result.blob
        holder = self.by_id(rank(blob, [p.node_id for p in self.peers])[0])
        version = holder.holdings.held(BlobKey(self.owner.node_id, blob))
        assert version is not None
        other = self.peers[0] if self.peers[0] is not holder else self.peers[1]
        # Another node signs a "release" of the owner's blob: not the owner's key.
        at_other, _ = link(other, holder)
        forged = Release.sign(other.owner.signer, blob, version.version, holder.node_id)
        claimed = wire.Release(
            self.owner.node_id,
            blob,
            version.version,
            holder.node_id,
            forged.owner_key.hex(),
            forged.signature.hex(),
        )
        failure = outcome(at_other.request(claimed))
        self.assertIsInstance(failure.value, RemoteError)
        self.assertIn("does not verify", str(failure.value))
        # The owner's release, but made for another holder.
        elsewhere = Release.sign(self.owner.owner.signer, blob, version.version, other.node_id)
        failure = outcome(at_other.request(release_message(elsewhere)))
        self.assertIn("for another holder", str(failure.value))
        self.assertEqual(self.holders(blob), [holder.node_id])
        # The owner's own release for this holder: dropped, file and entry.
        real = Release.sign(self.owner.owner.signer, blob, version.version, holder.node_id)
        settled(at_other.request(release_message(real)))
        self.assertEqual(self.holders(blob), [])
        self.assertEqual(list(holder.holdings.store.root.rglob(blob)), [])


class NotRelayedTests(SynchronousTestCase):
    """An owner with --replicas 2 among nodes that relay (the default): its files
    stay where it put them."""

    def test_an_org_that_places_its_files_is_not_relayed(self) -> None:
        owner = MemoryNode(Path(self.mktemp()), "owner", replicas=2)
        b, c = MemoryNode(Path(self.mktemp()), "b"), MemoryNode(Path(self.mktemp()), "c")
        for node in (owner, b, c):
            self.addCleanup(node.close)
        _, b_owner = link(owner, b)
        _, c_owner = link(owner, c)
        b_c, c_b = link(b, c)
        key = owner.owner.key_for("f")
        first = rank(key.blob, [b.node_id, c.node_id])[0]
        holder, other = (b, c) if first == b.node_id else (c, b)
        (to_owner, to_other), (other_to_owner, _) = (
            ((b_owner, b_c), (c_owner, c_b)) if holder is b else ((c_owner, c_b), (b_owner, b_c))
        )
        # The holder's session with the owner came up: HELLO said "placed". (The
        # other node is not told yet: what keeps the file from it is the holder.)
        holder.sync.met(to_owner)
        settled(owner.put("f", os.urandom(5000)))
        entry = holder.holdings.held(key)
        assert entry is not None
        settled(holder.sync.catch_up(to_other))
        self.assertIsNone(other.holdings.held(key))
        # Passed on anyway (by a node that did not know) to one that knows: refused.
        other.sync.met(other_to_owner)
        self.assertEqual(settled(holder.sync.offer(to_other, key, entry)), 0)
        self.assertIsNone(other.holdings.held(key))
