"""Tombstones collected once every node that could hold the blob confirmed its deletion.

The owner's signed horizon (crypto.Horizon), then nodes linked in memory
(tests/loopback.py, the real multiplexer and wire codec): a deletion collected
everywhere once every node confirmed it, held back by a node that is away or that
only a peer has met, never undone by a node that had not heard, and a horizon that
only the owner's key makes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.crypto import CryptoError, Horizon, Tombstone
from dfs_twisted.files import collect
from dfs_twisted.files.delete import Remover
from dfs_twisted.protocol import RequestRefused
from dfs_twisted.session import PeerClient, RemoteError, horizon_message
from dfs_twisted.store import BlobKey
from tests.fakes import Source
from tests.loopback import MemoryNode, MemorySession, link, outcome, settled

pytestmark = pytest.mark.unit

SIGNER = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


class HorizonTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        horizon = Horizon.sign(SIGNER, 42)
        self.assertEqual(horizon.verify(), horizon)
        self.assertEqual(Horizon.from_bytes(horizon.to_bytes()), horizon)
        self.assertEqual(len(horizon.to_bytes()), Horizon.SIZE)

    def test_another_key_or_version_does_not_verify(self) -> None:
        mine = Horizon.sign(SIGNER, 42)
        theirs = Horizon.sign(OTHER, 42)
        for forged in (
            Horizon(mine.owner, mine.owner_key, 43, mine.signature),
            Horizon(mine.owner, mine.owner_key, 42, theirs.signature),
            Horizon(mine.owner, theirs.owner_key, 42, theirs.signature),
            Horizon(mine.owner, mine.owner_key, 42, bytes(64)),
        ):
            self.assertRaises(CryptoError, forged.verify)
        raw = bytearray(mine.to_bytes())
        raw[-1] ^= 1
        self.assertRaises(CryptoError, Horizon.from_bytes, bytes(raw))


class Network(SynchronousTestCase):
    """The owner A and peers B and C, every pair linked (the seed's three nodes)."""

    def setUp(self) -> None:
        self.a, self.b, self.c = (self.node(org) for org in "abc")
        self.links: dict[frozenset[str], tuple[MemorySession, MemorySession]] = {}
        for x, y in ((self.a, self.b), (self.a, self.c), (self.b, self.c)):
            self.connect(x, y)

    def node(self, org: str) -> MemoryNode:
        node = MemoryNode(Path(self.mktemp()), org)
        self.addCleanup(node.close)
        return node

    def connect(self, x: MemoryNode, y: MemoryNode) -> None:
        self.links[frozenset((x.org, y.org))] = link(x, y)

    def cut(self, x: MemoryNode, y: MemoryNode) -> None:
        self.links[frozenset((x.org, y.org))][0].close("gone")

    def session(self, x: MemoryNode, y: MemoryNode) -> MemorySession:
        """x's live session with y."""
        return next(s for s in x.sessions if not s.closed and s.info.node_id == y.node_id)

    def delete(self, name: str) -> None:
        remover = Remover(
            self.a.owner, self.a.holdings, self.a.ledger, self.a.live, self.a.placement,
            self.a.collector,
        )  # fmt: skip
        settled(remover.delete(name))

    def sync(self, x: MemoryNode, y: MemoryNode) -> int:
        changes: int = settled(x.sync.catch_up(self.session(x, y)))
        return changes

    def sync_everyone(self) -> None:
        for x in (self.a, self.b, self.c):
            for y in (self.a, self.b, self.c):
                if x is not y and any(s.info.node_id == y.node_id for s in x.live()):
                    self.sync(x, y)

    def collect(self) -> int:
        collected: int = settled(self.a.collector.run())
        return collected

    def key(self, name: str) -> BlobKey:
        return self.a.owner.key_for(name)

    def tombstones(self, node: MemoryNode) -> list[str]:
        return [b for b, e in node.holdings.catalog.entries(self.a.node_id) if e.deleted]

    def stored(self, node: MemoryNode, name: str) -> bool:
        entry = node.holdings.held(self.key(name))
        return entry is not None and not entry.deleted


class CollectionTests(Network):
    def test_collected_everywhere_once_every_node_confirmed(self) -> None:
        settled(self.a.put("gone", os.urandom(3000)))
        settled(self.a.put("kept", os.urandom(3000)))
        self.delete("gone")
        for node in (self.a, self.b, self.c):
            self.assertEqual(self.tombstones(node), [self.key("gone").blob])
        self.assertEqual(self.collect(), 1)
        for node in (self.a, self.b, self.c):
            self.assertEqual(self.tombstones(node), [])
            self.assertIsNone(node.holdings.tombstone(self.key("gone")))
            self.assertTrue(self.stored(node, "kept"))
            self.assertGreater(node.horizons.version(self.a.node_id), 0)
        # The ledger keeps the deletion: the owner still never serves the file.
        written = self.a.ledger.get(self.key("gone").blob)
        self.assertTrue(written is not None and written.deleted)
        # Nothing comes back, however often the nodes compare.
        for _ in range(2):
            self.sync_everyone()
        for node in (self.a, self.b, self.c):
            self.assertEqual(self.tombstones(node), [])
            self.assertFalse(self.stored(node, "gone"))

    def test_a_node_away_holds_collection_back_until_it_is_back_and_confirmed(self) -> None:
        settled(self.a.put("gone", os.urandom(3000)))
        self.cut(self.a, self.c)
        self.cut(self.b, self.c)
        self.delete("gone")
        self.assertEqual(self.collect(), 0)
        self.assertEqual(self.collect(), 0)
        # C still has the blob, so A and B keep the tombstone that makes it lose.
        self.assertTrue(self.stored(self.c, "gone"))
        for node in (self.a, self.b):
            self.assertEqual(self.tombstones(node), [self.key("gone").blob])
        # C comes back to B first: B's tombstone wins over C's old copy, both ways.
        self.connect(self.b, self.c)
        self.sync(self.c, self.b)
        self.assertEqual(self.tombstones(self.b), [self.key("gone").blob])
        self.sync(self.b, self.c)
        self.assertFalse(self.stored(self.c, "gone"))
        self.assertEqual(self.collect(), 0)  # C has not confirmed to A yet
        self.connect(self.a, self.c)
        self.assertEqual(self.collect(), 1)
        for node in (self.a, self.b, self.c):
            self.assertEqual(self.tombstones(node), [])
            self.assertFalse(self.stored(node, "gone"))

    def test_a_node_that_missed_the_horizon_does_not_hand_tombstones_back(self) -> None:
        settled(self.a.put("gone", os.urandom(3000)))
        self.delete("gone")
        # C confirmed, then left before the horizon was signed.
        self.a.collector.collect_after = 10**10  # confirm now, collect later
        self.assertEqual(self.collect(), 0)
        self.cut(self.a, self.c)
        self.cut(self.b, self.c)
        self.a.collector.collect_after = 0
        self.assertEqual(self.collect(), 1)
        self.assertEqual(self.tombstones(self.b), [])
        self.assertEqual(self.tombstones(self.c), [self.key("gone").blob])
        # C is back, at B first: its tombstone is refused, never buried again at B.
        self.connect(self.b, self.c)
        self.assertEqual(self.sync(self.c, self.b), 0)
        self.assertEqual(self.tombstones(self.b), [])
        self.assertEqual(self.sync(self.c, self.b), 0)
        self.assertEqual(self.tombstones(self.b), [])
        # Back at A too: A gives C its horizon, and C drops the tombstone.
        self.connect(self.a, self.c)
        self.sync(self.a, self.c)
        self.assertEqual(self.tombstones(self.c), [])
        self.sync_everyone()
        for node in (self.a, self.b, self.c):
            self.assertEqual(self.tombstones(node), [])

    def test_a_node_holding_the_namespace_passes_the_horizon_on(self) -> None:
        settled(self.a.put("kept", os.urandom(3000)))
        settled(self.a.put("gone", os.urandom(3000)))
        self.delete("gone")
        self.a.collector.collect_after = 10**10
        self.assertEqual(self.collect(), 0)
        self.cut(self.a, self.c)
        self.a.collector.collect_after = 0
        self.assertEqual(self.collect(), 1)
        self.assertEqual(self.tombstones(self.c), [self.key("gone").blob])
        # B holds A's "kept": comparing that namespace with C, it gives C the horizon.
        self.sync(self.b, self.c)
        self.assertEqual(self.tombstones(self.c), [])
        self.assertTrue(self.stored(self.c, "kept"))

    def test_a_node_only_a_peer_has_met_holds_collection_back(self) -> None:
        # D never met A, but B passed A's blobs on to it.
        d = self.node("d")
        self.connect(self.b, d)
        settled(self.a.put("gone", os.urandom(3000)))
        self.sync(self.b, d)
        self.assertTrue(self.stored(d, "gone"))
        self.delete("gone")
        self.assertEqual(self.collect(), 0)
        self.assertEqual(self.a.collector.required(), {self.b.node_id, self.c.node_id, d.node_id})
        # Even with the deletion relayed to D: A cannot hear D confirm it.
        self.sync(self.b, d)
        self.assertFalse(self.stored(d, "gone"))
        self.assertEqual(self.collect(), 0)
        self.assertEqual(self.tombstones(self.b), [self.key("gone").blob])

    def test_a_peer_naming_no_one_does_not_drop_a_node_the_owner_met(self) -> None:
        settled(self.a.put("gone", os.urandom(3000)))
        self.cut(self.a, self.c)
        self.cut(self.b, self.c)
        self.delete("gone")
        real = self.b.horizons.answer

        def naming_no_one(session: object, request: wire.Horizon) -> wire.HorizonReply:
            reply = real(session, request)  # type: ignore[arg-type]
            return wire.HorizonReply(reply.version, reply.key, reply.signature, (), True)

        self.b.horizons.answer = naming_no_one  # type: ignore[method-assign]
        self.assertEqual(self.collect(), 0)
        self.assertEqual(self.tombstones(self.a), [self.key("gone").blob])

    def test_a_peer_that_refuses_the_deletion_has_not_confirmed(self) -> None:
        settled(self.a.put("gone", os.urandom(3000)))
        self.delete("gone")
        # Its acknowledgement lost (a session that failed mid-delete, say): B refuses
        # the DELETE from now on, so it never confirms.
        self.a.collector._load()[self.key("gone").blob].acked.discard(self.b.node_id)
        real = self.b.server.answer

        def refusing(session: object, request: wire.ControlRequest) -> object:
            if isinstance(request, wire.Delete):
                raise RequestRefused(wire.Code.QUOTA, "full")
            return real(session, request)  # type: ignore[arg-type]

        self.b.server.answer = refusing  # type: ignore[assignment,method-assign]
        self.assertEqual(self.collect(), 0)
        self.assertEqual(self.tombstones(self.c), [self.key("gone").blob])


class WindowTests(Network):
    def test_a_long_ledger_is_collected_oldest_first_a_window_at_a_time(self) -> None:
        names = [f"f{i}" for i in range(5)]
        for name in names:
            settled(self.a.put(name, os.urandom(1000)))
        for name in names:
            self.delete(name)
        # As after a restart with many deletions in the ledger: two held at once.
        self.patch(collect, "MAX_PENDING", 2)
        self.a.collector._pending = None
        self.assertEqual([self.collect() for _ in range(4)], [2, 2, 1, 0])
        for node in (self.a, self.b, self.c):
            self.assertEqual(self.tombstones(node), [])

    def test_no_horizon_passes_a_deletion_not_read_yet(self) -> None:
        for name in ("f0", "f1", "f2"):
            settled(self.a.put(name, os.urandom(1000)))
            self.delete(name)
        self.patch(collect, "MAX_PENDING", 2)
        self.a.collector._pending = None
        settled(self.a.put("f3", os.urandom(1000)))
        self.delete("f3")  # confirmed at once, but f2 was not read from the ledger yet
        self.assertEqual(self.collect(), 2)
        self.assertEqual(
            sorted(self.tombstones(self.b)), sorted(self.key(n).blob for n in ("f2", "f3"))
        )
        self.assertEqual(self.collect(), 2)
        self.assertEqual(self.tombstones(self.b), [])


class ForgedHorizonTests(Network):
    """B lies: it tries to make C drop A's tombstone without A's signature."""

    def setUp(self) -> None:
        super().setUp()
        settled(self.a.put("gone", os.urandom(3000)))
        self.delete("gone")
        tomb = self.c.holdings.tombstone(self.key("gone"))
        assert tomb is not None
        self.tomb: Tombstone = tomb

    def offer(self, message: wire.Horizon) -> object:
        return outcome(self.session(self.b, self.c).request(message))

    def assert_kept(self) -> None:
        self.assertEqual(self.tombstones(self.c), [self.key("gone").blob])
        self.assertEqual(self.c.horizons.version(self.a.node_id), 0)

    def test_signed_by_another_key_is_refused(self) -> None:
        forged = Horizon.sign(self.b.owner.signer, self.tomb.version)
        # B's own key under A's id: the id is the key's hash, so it does not verify.
        message = horizon_message(self.a.node_id, forged)
        failure = self.offer(message)
        self.assertEqual(failure.value.code, wire.Code.BAD_SIGNATURE)  # type: ignore[attr-defined]
        self.assert_kept()

    def test_unsigned_or_altered_is_refused(self) -> None:
        real = Horizon.sign(self.a.owner.signer, self.tomb.version - 1)
        owner, version = self.a.node_id, self.tomb.version
        for message in (
            wire.Horizon(owner, version, self.a.owner.public_key.hex(), "00" * 64),
            wire.Horizon(owner, version, real.owner_key.hex(), real.signature.hex()),
        ):
            failure = self.offer(message)
            self.assertIsInstance(failure.value, RemoteError)  # type: ignore[attr-defined]
            self.assert_kept()
        # Half a horizon (a version, no signature) is no horizon either.
        failure = self.offer(wire.Horizon(self.a.node_id, self.tomb.version))
        self.assertEqual(failure.value.code, wire.Code.BAD_REQUEST)  # type: ignore[attr-defined]
        self.assert_kept()

    def test_a_real_but_lower_horizon_collects_only_below_it(self) -> None:
        lower = Horizon.sign(self.a.owner.signer, self.tomb.version - 1)
        self.offer(horizon_message(self.a.node_id, lower))
        self.assertEqual(self.c.horizons.version(self.a.node_id), self.tomb.version - 1)
        self.assertEqual(self.tombstones(self.c), [self.key("gone").blob])

    def test_the_owners_horizon_passed_on_by_anyone_is_taken(self) -> None:
        real = Horizon.sign(self.a.owner.signer, self.tomb.version)
        self.offer(horizon_message(self.a.node_id, real))
        self.assertEqual(self.tombstones(self.c), [])
        # And C refuses the collected tombstone from now on, whoever sends it.
        failure = outcome(PeerClient(self.session(self.b, self.c)).delete(self.tomb))
        self.assertEqual(failure.value.code, wire.Code.HAVE)
        self.assertEqual(self.tombstones(self.c), [])


class ResurrectionTests(Network):
    def test_an_old_copy_pushed_after_collection_is_deleted_again(self) -> None:
        settled(self.a.put("gone", os.urandom(3000)))
        key = self.key("gone")
        old = self.b.holdings.catalog.get(key)
        assert old is not None
        f = self.b.holdings.store.open(key)
        assert f is not None
        with f:
            kept = f.read()  # B keeps the ciphertext, whatever it says
        self.delete("gone")
        self.assertEqual(self.collect(), 1)
        # B pushes the old version to C, which has collected the tombstone: taken.
        settled(PeerClient(self.session(self.b, self.c)).push(key, old.version, Source(kept)))
        self.assertTrue(self.stored(self.c, "gone"))
        # The owner sees it at its next comparison with C and deletes it again.
        self.sync(self.a, self.c)
        self.sync(self.a, self.c)
        self.assertFalse(self.stored(self.c, "gone"))
        again = self.a.ledger.get(key.blob)
        assert again is not None
        self.assertTrue(again.deleted)
        self.assertGreater(again.version, self.a.horizons.version(self.a.node_id))
        self.assertEqual(self.tombstones(self.c), [key.blob])

    def test_nothing_proven_is_not_deleted_again(self) -> None:
        settled(self.a.put("gone", os.urandom(3000)))
        key = self.key("gone")
        self.delete("gone")
        self.assertEqual(self.collect(), 1)
        newest = self.a.ledger.newest
        claim = wire.ListEntry(key.blob, 5, False, "ab" * 140)
        self.a.collector.listed(self.c.node_id, {key.blob: claim})
        self.assertEqual(self.a.ledger.newest, newest)


class RestartTests(SynchronousTestCase):
    def test_the_horizon_and_what_it_collected_survive_a_restart(self) -> None:
        root = Path(self.mktemp())
        a = MemoryNode(root / "a", "a")
        b = MemoryNode(root / "b", "b")
        link(a, b)
        settled(a.put("gone", os.urandom(3000)))
        key = a.owner.key_for("gone")
        remover = Remover(a.owner, a.holdings, a.ledger, a.live, a.placement, a.collector)
        settled(remover.delete("gone"))
        tomb = b.holdings.tombstone(key)
        self.assertEqual(settled(a.collector.run()), 1)
        b.close()
        again = MemoryNode(root / "b", "b", owner=b.owner)
        self.addCleanup(again.close)
        a.close()
        self.assertEqual(again.horizons.version(a.node_id), tomb.version if tomb else -1)
        self.assertEqual(again.holdings.catalog.entries(a.node_id), [])

    def test_rows_left_by_a_crash_are_not_read_back(self) -> None:
        root = Path(self.mktemp())
        node = MemoryNode(root, "x")
        owner = Ed25519PrivateKey.generate()
        tomb = Tombstone.sign(owner, "ab" * 32, 10)
        settled(node.holdings.bury(tomb, tomb.owner))
        settled(node.holdings.index.put_horizon(tomb.owner, 10, Horizon.sign(owner, 10).to_bytes()))
        rows = list(node.holdings.index.rows())
        self.assertEqual(rows, [])
        node.close()
