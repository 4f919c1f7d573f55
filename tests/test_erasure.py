"""Erasure coding (--erasure K-of-N): shares made, placed, repaired, released, rebuilt.

Pure tests of `erasure` (any K of N shares rebuild the bytes) and of the share
blobs' metadata, then nodes linked in memory (tests/loopback.py) through the real
multiplexer: a put sends each slot peer its share only, a node that lost its store
rebuilds its files from any K holders, a damaged share is passed over, a holder
away past --repair-after has its share placed on the next peer and released from
there when it is back, and a delete leaves a tombstone for every share.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.crypto import (
    Decryptor,
    Encryptor,
    IntegrityError,
    OrgKey,
    Share,
    open_metadata,
    parse_header,
    share_id,
)
from dfs_twisted.crypto import blob as blob_module
from dfs_twisted.erasure import Erasure, ShareDecoder, ShareEncoder, parse_erasure
from dfs_twisted.files.delete import Remover
from dfs_twisted.files.placement import Placement, Redundancy, rank
from dfs_twisted.store import BlobKey
from tests.loopback import MemoryNode, link, pump, settled

pytestmark = pytest.mark.unit

DATA = os.urandom(5 * (1 << 20) + 4321)  # a few segments of 2-of-3, the last one short


def encode(erasure: Erasure, data: bytes, block: int, cuts: list[int]) -> list[list[bytes]]:
    """Every share's blocks, segment by segment, from ``data`` fed in ``cuts`` pieces."""
    encoder = ShareEncoder(erasure, range(erasure.n), block)
    segments: list[list[bytes]] = []
    start = 0
    for cut in [*cuts, len(data)]:
        segments += encoder.update(data[start : max(start, cut)])
        start = max(start, cut)
    segments.append(encoder.finish())
    return segments


def decode(erasure: Erasure, segments: list[list[bytes]], indices: tuple[int, ...]) -> bytes:
    decoder = ShareDecoder(erasure, indices)
    last = len(segments) - 1
    return b"".join(
        decoder.segment([segment[i] for i in indices], n == last)
        for n, segment in enumerate(segments)
    )


class CodingTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(
        k=st.integers(1, 4),
        extra=st.integers(1, 3),
        data=st.binary(max_size=3000),
        cuts=st.lists(st.integers(0, 3000), max_size=4),
    )
    def test_any_k_of_n_shares_rebuild_the_bytes(
        self, k: int, extra: int, data: bytes, cuts: list[int]
    ) -> None:
        erasure = Erasure(k, k + extra)
        segments = encode(erasure, data, 100, sorted(cuts))
        for n in range(erasure.n):
            share = b"".join(segment[n] for segment in segments)
            self.assertEqual(len(share), erasure.share_size(len(data), 100))
        for indices in itertools.combinations(range(erasure.n), k):
            self.assertEqual(decode(erasure, segments, indices[::-1]), data)

    def test_fewer_than_k_shares_or_shares_of_two_files_are_refused(self) -> None:
        erasure = Erasure(2, 3)
        with self.assertRaises(ValueError):
            ShareDecoder(erasure, (1,))
        with self.assertRaises(ValueError):
            ShareDecoder(erasure, (1, 1))
        one = encode(erasure, b"a" * 150, 100, [])
        other = encode(erasure, b"b" * 10, 100, [])
        with self.assertRaises(ValueError):  # blocks of different lengths
            ShareDecoder(erasure, (0, 1)).segment([one[-1][0], other[-1][1]], True)

    def test_k_of_n_is_parsed_with_one_line_errors(self) -> None:
        self.assertEqual(parse_erasure("3-of-6"), Erasure(3, 6))
        for text, error in (
            ("3of6", "is not K-of-N"),
            ("6-of-3", "K must be 1 or more and less than N"),
            ("0-of-2", "K must be 1 or more"),
            ("2-of-300", "N at most 256"),
        ):
            with self.assertRaises(ValueError) as caught:
                parse_erasure(text)
            self.assertIn(error, str(caught.exception))


class ShareBlobTests(SynchronousTestCase):
    def setUp(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.key = OrgKey.generate()
        self.signer = Ed25519PrivateKey.generate()

    def test_a_share_is_a_blob_whose_id_and_metadata_name_its_file_and_index(self) -> None:
        share = Share(4, 3, 6)
        enc = Encryptor(self.key, self.signer, "report.pdf", 7, mtime=1, share=share)
        self.assertEqual(enc.blob, share_id(self.key.blob_id("report.pdf"), 4))
        body = enc.header + b"".join(enc.update(b"x" * 5000)) + enc.finalize()
        meta = open_metadata(self.key, parse_header(body))
        self.assertEqual((meta.name, meta.share), ("report.pdf", share))
        dec = Decryptor(self.key)
        self.assertEqual(dec.feed(body) + dec.finish()[0], b"x" * 5000)
        # A file's own blob carries no share.
        plain = Encryptor(self.key, self.signer, "report.pdf", 7)
        self.assertIsNone(open_metadata(self.key, parse_header(plain.header)).share)

    def test_a_share_filed_under_another_index_does_not_open(self) -> None:
        # An insider (the owner's own node, buggy or subverted) files share 1 under
        # the id of share 2: a rebuild asking for share 2 must not take it.
        with mock.patch.object(blob_module, "share_id", lambda blob, _: share_id(blob, 2)):
            enc = Encryptor(self.key, self.signer, "r", 1, share=Share(1, 2, 3))
        self.assertEqual(enc.blob, share_id(self.key.blob_id("r"), 2))
        with self.assertRaises(IntegrityError):
            open_metadata(self.key, parse_header(enc.header))
        # Relabelling a real share's header instead breaks its authentication.
        real = Encryptor(self.key, self.signer, "r", 1, share=Share(1, 2, 3))
        raw = bytearray(real.header)
        at = raw.find(bytes.fromhex(real.blob))
        raw[at : at + 32] = bytes.fromhex(enc.blob)
        with self.assertRaises(IntegrityError):
            open_metadata(self.key, parse_header(bytes(raw)))


PEERS = [os.urandom(32).hex() for _ in range(10)]


class SlotTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 10_000.0
        self.seen: dict[str, float | None] = dict.fromkeys(PEERS)
        self.placement = Placement(
            Redundancy(erasure=Erasure(3, 6)),
            lambda: self.seen,
            repair_after=3600,
            clock=lambda: self.now,
        )

    def test_share_i_goes_to_the_i_th_peer_in_rank_order(self) -> None:
        blob = os.urandom(32).hex()
        self.assertEqual(self.placement.slots(blob), rank(blob, PEERS)[:6])
        self.assertEqual(self.placement.wanted(), 6)

    def test_a_peer_away_too_long_moves_its_own_share_only(self) -> None:
        blob = os.urandom(32).hex()
        ranked = rank(blob, PEERS)
        self.seen[ranked[2]] = self.now - 60  # away a minute: keeps its share
        self.assertEqual(self.placement.slots(blob), ranked[:6])
        self.seen[ranked[2]] = self.now - 3601
        self.seen[ranked[6]] = self.now - 3601  # the first spare is away too
        expected = ranked[:6]
        expected[2] = ranked[7]
        self.assertEqual(self.placement.slots(blob), expected)
        # A peer out of room for its share is passed over the same way.
        self.placement.refused(ranked[4], share_id(blob, 4))
        expected[4] = ranked[8]
        self.assertEqual(self.placement.slots(blob), expected)

    def test_a_share_elsewhere_is_surplus_only_once_its_slot_holds_the_version(self) -> None:
        blob = os.urandom(32).hex()
        slot = self.placement.slots(blob)[2]
        assert slot is not None
        share = share_id(blob, 2)
        self.assertIsNone(self.placement.share_placed(blob, 2, 5))  # held nowhere yet
        self.placement.holds(slot, share, 4)
        self.assertIsNone(self.placement.share_placed(blob, 2, 5))  # an older version
        self.placement.holds(slot, share, 5)
        self.assertEqual(self.placement.share_placed(blob, 2, 5), slot)
        # Back from away, a peer counts for nothing until it lists what it holds.
        self.placement.forget_peer(slot)
        self.assertIsNone(self.placement.share_placed(blob, 2, 5))

    def test_copies_count_distinct_shares_held_of_the_version(self) -> None:
        blob = os.urandom(32).hex()
        slots = self.placement.slots(blob)
        for index, peer in enumerate(slots[:4]):
            assert peer is not None
            self.placement.holds(peer, share_id(blob, index), 5)
        self.placement.holds(PEERS[9], share_id(blob, 0), 5)  # a second copy of share 0
        self.placement.holds(PEERS[9], share_id(blob, 5), 4)  # an older version
        self.assertEqual(self.placement.copies(blob, 5), 4)
        self.assertEqual(self.placement.under_replicated([(blob, 5)]), 1)


class ErasureNetworkTests(SynchronousTestCase):
    """An owner with --erasure 2-of-3 and four peers, linked in memory."""

    def setUp(self) -> None:
        self.owner = self.node("owner", erasure=Erasure(2, 3))
        self.peers = [self.node(f"p{i}") for i in range(4)]
        self.links = {p.node_id: link(self.owner, p) for p in self.peers}

    def node(self, org: str, erasure: Erasure | None = None, **kw: object) -> MemoryNode:
        node = MemoryNode(Path(self.mktemp()), org, erasure=erasure, **kw)  # type: ignore[arg-type]
        self.addCleanup(node.close)
        return node

    def by_id(self, node_id: str) -> MemoryNode:
        return next(p for p in self.peers if p.node_id == node_id)

    def holders(self, blob: str) -> list[str]:
        key = BlobKey(self.owner.node_id, blob)
        held = [(p, p.holdings.held(key)) for p in self.peers]
        return [p.node_id for p, entry in held if entry is not None and not entry.deleted]

    def sync_all(self) -> None:
        for session in self.owner.live():
            settled(self.owner.sync.catch_up(session))

    def test_each_slot_peer_gets_its_share_and_nobody_the_file(self) -> None:
        result = settled(self.owner.put("f", DATA))
        self.assertEqual((result.replicas, result.shares), (1, 3))
        slots = rank(result.blob, [p.node_id for p in self.peers])[:3]
        self.assertEqual(self.holders(result.blob), [])
        for index, peer in enumerate(slots):
            self.assertEqual(self.holders(share_id(result.blob, index)), [peer])
        # Each share is about half the file (2-of-3), not a copy of it.
        share = self.by_id(slots[0]).holdings.held(
            BlobKey(self.owner.node_id, share_id(result.blob, 0))
        )
        assert share is not None
        self.assertLess(share.size, len(DATA) * 0.6)
        # A sync has nothing to add: every peer holds what it should.
        before = [p.holdings.catalog.changes(self.owner.node_id) for p in self.peers]
        self.sync_all()
        self.assertEqual(
            before, [p.holdings.catalog.changes(self.owner.node_id) for p in self.peers]
        )

    def lose_store(self) -> MemoryNode:
        """The owner again, with the same keys but an empty store and ledger."""
        fresh = self.node("owner", erasure=Erasure(2, 3), owner=self.owner.owner)
        for session in self.owner.sessions:
            session.close("lost")
        for peer in self.peers:
            link(fresh, peer)
        return fresh

    def read(self, node: MemoryNode, blob: str) -> bytes:
        f = node.holdings.open(BlobKey(node.node_id, blob))
        assert f is not None
        with f:
            dec = Decryptor(node.owner.key)
            return dec.feed(f.read()) + dec.finish()[0]

    def test_recover_rebuilds_from_any_two_shares(self) -> None:
        result = settled(self.owner.put("f", DATA))
        slots = rank(result.blob, [p.node_id for p in self.peers])[:3]
        for missing in slots:  # each holder gone in turn: the other two suffice
            fresh = self.lose_store()
            for session in fresh.sessions:
                if session.info.node_id == missing:
                    session.close("away")
            restored, errors = settled(fresh.recovery.recover())
            self.assertEqual((restored, errors), (["f"], []))
            self.assertEqual(self.read(fresh, result.blob), DATA)
            written = fresh.ledger.get(result.blob)
            assert written is not None
            self.assertEqual((written.name, written.size), ("f", len(DATA)))
            self.owner = fresh

    def test_one_share_is_not_enough_and_nothing_is_kept(self) -> None:
        result = settled(self.owner.put("f", DATA))
        slots = rank(result.blob, [p.node_id for p in self.peers])[:3]
        fresh = self.lose_store()
        for session in fresh.sessions:
            if session.info.node_id in slots[:2]:
                session.close("away")
        restored, errors = settled(fresh.recovery.recover())
        self.assertEqual(restored, [])
        self.assertEqual(len(errors), 1)
        self.assertIn("newest version is not on any connected peer", errors[0])
        self.assertIsNone(fresh.holdings.held(BlobKey(fresh.node_id, result.blob)))

    def test_a_damaged_share_is_passed_over_for_another(self) -> None:
        result = settled(self.owner.put("f", DATA))
        first = self.by_id(rank(result.blob, [p.node_id for p in self.peers])[0])
        key = BlobKey(self.owner.node_id, share_id(result.blob, 0))
        path = next(first.holdings.store.root.rglob(key.blob))
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 1
        path.write_bytes(bytes(raw))
        fresh = self.lose_store()
        restored, errors = settled(fresh.recovery.recover())
        self.assertEqual((restored, errors), (["f"], []))
        self.assertEqual(self.read(fresh, result.blob), DATA)

    def away_past_repair(self, blob: str) -> tuple[list[str], str, str]:
        """The holder of share 1 goes away past --repair-after: the owner's sync puts
        the share on the next peer in rank. The rank, the one away, the spare."""
        ranked = rank(blob, [p.node_id for p in self.peers])
        away, spare = ranked[1], ranked[3]
        at_owner, _ = self.links[away]
        at_owner.close("gone", at=self.owner.clock.seconds())
        self.owner.clock.advance(3601)
        self.sync_all()
        self.assertEqual(sorted(self.holders(share_id(blob, 1))), sorted([away, spare]))
        return ranked, away, spare

    def test_a_holder_away_too_long_is_replaced_and_released_when_back(self) -> None:
        result = settled(self.owner.put("f", DATA))
        ranked, away, _ = self.away_past_repair(result.blob)
        share = share_id(result.blob, 1)
        mine = self.owner.holdings.held(BlobKey(self.owner.node_id, result.blob))
        assert mine is not None
        self.assertEqual(self.owner.placement.under_replicated([(result.blob, mine.version)]), 0)
        # Back: its slot again; the spare's copy is released by the owner.
        self.links[away] = link(self.owner, self.by_id(away))
        self.sync_all()
        self.assertEqual(self.holders(share), [away])
        for index in (0, 2):
            self.assertEqual(self.holders(share_id(result.blob, index)), [ranked[index]])

    def test_a_spare_keeps_its_share_until_the_slot_peer_holds_it(self) -> None:
        result = settled(self.owner.put("f", DATA))
        _, away, spare = self.away_past_repair(result.blob)
        share = share_id(result.blob, 1)
        # It comes back having lost its store, and with no room for the share: the
        # spare's copy is the only one, and must stay.
        old = self.by_id(away)
        back = self.node(old.org, owner=old.owner, quota=0)
        self.peers[self.peers.index(old)] = back
        at_back, _ = link(self.owner, back)
        self.owner.sync.met(at_back)  # as the node does when a session comes up
        self.sync_all()
        self.sync_all()
        self.assertEqual(self.holders(share), [spare])
        mine = self.owner.holdings.held(BlobKey(self.owner.node_id, result.blob))
        assert mine is not None
        self.assertEqual(self.owner.placement.under_replicated([(result.blob, mine.version)]), 0)

    def test_a_peer_back_counts_once_it_has_listed_again(self) -> None:
        result = settled(self.owner.put("f", DATA))
        mine = self.owner.holdings.held(BlobKey(self.owner.node_id, result.blob))
        assert mine is not None
        self.assertEqual(self.owner.placement.copies(result.blob, mine.version), 3)
        first = rank(result.blob, [p.node_id for p in self.peers])[0]
        # Its session comes up again: what it held may be gone (a lost disk) until
        # its listing (or digest) says otherwise.
        self.owner.sync.met(self.links[first][0])
        self.assertEqual(self.owner.placement.copies(result.blob, mine.version), 2)
        pump()  # the catch-up that `met` started: the peer's digest matches
        self.assertEqual(self.owner.placement.copies(result.blob, mine.version), 3)

    def test_share_holders_are_audited_and_one_that_fails_is_replaced(self) -> None:
        result = settled(self.owner.put("f", DATA))
        mine = self.owner.holdings.held(BlobKey(self.owner.node_id, result.blob))
        assert mine is not None
        ranked = rank(result.blob, [p.node_id for p in self.peers])
        passed, failed = settled(self.owner.auditor.run())
        self.assertEqual((passed, failed), (3, 0))  # each peer's share, proven
        sessions = {s.info.node_id: s for s in self.owner.live()}
        # Share 0's holder damaged it (a byte of every chunk); share 1's lost it;
        # share 2's keeps share 0's bytes under share 2's id.
        paths = [
            next(self.by_id(ranked[i]).holdings.store.root.rglob(share_id(result.blob, i)))
            for i in range(3)
        ]
        raw = bytearray(paths[0].read_bytes())
        header = parse_header(bytes(raw))
        for at in range(len(header.raw) + 100, len(raw), header.span):
            raw[at] ^= 1  # a byte of every chunk's ciphertext
        paths[0].write_bytes(bytes(raw))
        paths[1].unlink()
        paths[2].write_bytes(paths[0].read_bytes())
        for index in range(3):
            audit = self.owner.auditor.audit_share(
                sessions[ranked[index]], result.blob, index, mine.version
            )
            self.assertFalse(settled(audit), index)
        self.assertEqual(self.owner.placement.copies(result.blob, mine.version), 0)
        # Share 0 goes to the next peer in rank (the only one left: the others wait
        # for a peer), and the bad copy is released once that one holds it.
        self.sync_all()
        self.sync_all()
        self.assertEqual(self.holders(share_id(result.blob, 0)), [ranked[3]])
        self.assertEqual(self.owner.placement.copies(result.blob, mine.version), 1)

    def test_a_delete_buries_every_share(self) -> None:
        result = settled(self.owner.put("f", DATA))
        remover = Remover(
            self.owner.owner,
            self.owner.holdings,
            self.owner.ledger,
            self.owner.live,
            self.owner.placement,
        )
        here, outcomes = settled(remover.delete("f"))
        self.assertTrue(here)
        self.assertTrue(all(o.ok for o in outcomes))
        for index in range(3):
            key = BlobKey(self.owner.node_id, share_id(result.blob, index))
            for peer in self.peers:
                entry = peer.holdings.catalog.get(key)
                assert entry is not None
                self.assertTrue(entry.deleted)
            self.assertEqual(self.holders(key.blob), [])
        # And nothing comes back at the next sync.
        self.sync_all()
        self.assertEqual(self.holders(share_id(result.blob, 0)), [])
