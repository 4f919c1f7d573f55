"""Members of the federation that lie, through the real protocol (tests/liars.py).

Each test states one promise of docs/security.md: what a peer claims about this
org's files counts only when this org's signature proves it, and a node never
rolls a file back to an older version because a peer holds only that one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dfs_twisted import wire
from dfs_twisted.catalog import BLOCK
from dfs_twisted.crypto import Encryptor, Horizon, OrgKey, Tombstone
from dfs_twisted.files import FileNotFound, NewestUnavailable
from dfs_twisted.launcher import free_port
from dfs_twisted.mux import MAX_WAITING
from dfs_twisted.node import NodeService
from dfs_twisted.ratelimit import ANSWER_BURST
from dfs_twisted.session import PeerSession, RemoteError, delete_message, horizon_message
from dfs_twisted.space import SpaceLimits
from dfs_twisted.store import BlobKey

from .inprocess import NodeTestCase, blob_path, eventually, get, logged, put
from .liars import Liar, deleted_at_max, naming_no_one, newer_with_replayed_proof, store_blob

pytestmark = pytest.mark.inprocess

REPORT = os.urandom(200_000)
NOTES = os.urandom(5_000)


class LyingListingTests(NodeTestCase):
    """V (the victim) dials H (honest) and L (which forges its listings)."""

    async def network(self, liar_only: bool = False) -> tuple[NodeService, NodeService, Liar]:
        h_port, l_port = free_port(), free_port()
        liar_node = self.make_node(l_port, org="liar")
        peers = [l_port] if liar_only else [h_port, l_port]
        nodes = [liar_node]
        if not liar_only:
            nodes.append(self.make_node(h_port, org="honest"))
        victim = self.make_node(peers=peers, org="victim")
        await self.start(victim, *nodes)
        await eventually(lambda: len(victim.registry.live()) == len(nodes), "V's sessions")
        await put(victim, "report.bin", REPORT)
        await put(victim, "notes.txt", NOTES)
        await eventually(
            lambda: len(liar_node.files.catalog.live(victim.node_id)) == 2, "L to hold both"
        )
        return victim, nodes[-1], Liar(liar_node)

    def live(self, node: NodeService, owner: str) -> set[str]:
        return set(node.files.catalog.live(owner))

    async def test_forged_deletions_delete_nothing_and_break_nothing(self) -> None:
        victim, honest, liar = await self.network()
        before = self.live(victim, victim.node_id)
        liar.forge_listing = deleted_at_max
        recovered, _ = await victim.files.recover()
        self.assertEqual(recovered, [])
        self.assertEqual(self.live(victim, victim.node_id), before)
        self.assertEqual(self.live(honest, victim.node_id), before)
        self.assertLess(victim.ledger.newest, 2**63)
        # Puts and deletes go on: no version was pushed to the end of the range.
        await put(victim, "notes.txt", b"edited")
        self.assertEqual(await get(victim, "notes.txt"), (b"edited", "local"))
        await victim.files.delete("report.bin")
        with self.assertRaises(FileNotFound):
            await victim.files.open_download("report.bin")

    async def test_a_replayed_proof_does_not_prove_a_newer_version(self) -> None:
        victim, _, liar = await self.network()
        liar.forge_listing = newer_with_replayed_proof
        for name in ("report.bin", "notes.txt"):
            blob_path(victim, victim.node_id, victim.files.owner.key_for(name).blob).unlink()
        recovered, _ = await victim.files.recover()
        self.assertEqual(sorted(recovered), ["notes.txt", "report.bin"])
        self.assertEqual(await get(victim, "report.bin"), (REPORT, "local"))
        self.assertLess(victim.ledger.newest, 2**63)

    async def test_recover_after_a_loss_ignores_the_liar(self) -> None:
        victim, _, liar = await self.network()
        liar.forge_listing = deleted_at_max
        for name in ("report.bin", "notes.txt"):
            blob_path(victim, victim.node_id, victim.files.owner.key_for(name).blob).unlink()
        recovered, _ = await victim.files.recover()
        self.assertEqual(sorted(recovered), ["notes.txt", "report.bin"])
        self.assertEqual(await get(victim, "notes.txt"), (NOTES, "local"))

    async def test_a_liar_that_withholds_cannot_hide_files(self) -> None:
        # L is the only peer: it claims every file deleted and serves none of them.
        victim, _, liar = await self.network(liar_only=True)
        liar.forge_listing = deleted_at_max
        liar.refuse_fetch = True
        for name in ("report.bin", "notes.txt"):
            blob_path(victim, victim.node_id, victim.files.owner.key_for(name).blob).unlink()
        recovered, errors = await victim.files.recover()
        self.assertEqual(recovered, [])
        self.assertEqual(len(errors), 2)
        for error in errors:
            self.assertIn("newest version is not on any connected peer", error)
        # Still listed (held by peers only), and said to be unavailable, not missing.
        listed = {(e.name, e.here) for e in await victim.files.list_files()}
        self.assertEqual(listed, {("report.bin", False), ("notes.txt", False)})
        with self.assertRaises(NewestUnavailable):
            await victim.files.open_download("notes.txt")


class RollbackTests(NodeTestCase):
    async def test_get_never_serves_an_older_version(self) -> None:
        # No malice needed: H keeps version 1 and refuses version 2 for its quota.
        h_port = free_port()
        honest = self.make_node(h_port, org="honest", space=SpaceLimits(quota=100_000))
        victim = self.make_node(peers=[h_port], org="victim")
        await self.connected(victim, honest)
        await put(victim, "f", b"version one")
        _, replicas = await put(victim, "f", os.urandom(300_000))
        self.assertEqual(replicas, 1)  # H refused it
        key = BlobKey(victim.node_id, victim.files.owner.key_for("f").blob)
        self.assertEqual(len(honest.files.catalog.live(victim.node_id)), 1)
        blob_path(victim, key.owner, key.blob).unlink()
        with self.assertRaises(NewestUnavailable) as caught:
            await victim.files.open_download("f")
        self.assertIn("older versions are not served", str(caught.exception))
        recovered, errors = await victim.files.recover()
        self.assertEqual(recovered, [])
        self.assertFalse(victim.store.exists(key))  # version one was not brought back
        self.assertTrue(any("newest version is not on any connected peer" in e for e in errors))

    async def test_a_lost_store_does_not_lose_the_newest_version(self) -> None:
        # The ledger, in private/, outlives store/ and its index: after the loss the
        # node still knows version 2 was written, and does not take H's version 1.
        h_port = free_port()
        honest = self.make_node(h_port, org="honest", space=SpaceLimits(quota=100_000))
        data_dir = Path(self.mktemp())
        victim = self.make_node(peers=[h_port], org="victim", data_dir=data_dir)
        await self.connected(victim, honest)
        await put(victim, "f", b"version one")
        _, replicas = await put(victim, "f", os.urandom(300_000))
        self.assertEqual(replicas, 1)  # H refused it
        await victim.stopService()
        shutil.rmtree(data_dir / "store")
        again = self.make_node(peers=[h_port], org="victim", data_dir=data_dir)
        await self.connected(again, honest)
        with self.assertRaises(NewestUnavailable):
            await again.files.open_download("f")


def signed_blob(
    name: str, size: int, signer: Ed25519PrivateKey | None = None
) -> tuple[str, str, bytes]:
    """A real blob of some org (a fresh one unless ``signer`` is given): (owner, blob, bytes)."""
    enc = Encryptor(OrgKey.generate(), signer or Ed25519PrivateKey.generate(), name, 1)
    data = b"".join([enc.header, *enc.update(os.urandom(size)), enc.finalize()])
    return enc.owner, enc.blob, data


class QuotaTests(NodeTestCase):
    """Space is charged to the peer that sends, and transfers in flight count."""

    QUOTA = 300_000

    async def pair(self, *flags: str) -> tuple[NodeService, NodeService, PeerSession]:
        v_port = free_port()
        victim = self.make_node(
            v_port,
            org="victim",
            space=SpaceLimits(quota=self.QUOTA),
            relay="--no-relay" not in flags,
        )
        attacker = self.make_node(peers=[v_port], org="attacker")
        await self.connected(victim, attacker)
        return victim, attacker, self.session(attacker, victim)

    async def test_invented_owners_share_the_senders_quota(self) -> None:
        victim, attacker, session = await self.pair()
        blobs = [signed_blob(f"f{i}", 100_000) for i in range(20)]
        codes = [await store_blob(session, BlobKey(o, b), 1, data) for o, b, data in blobs]
        self.assertEqual(codes.count("ok"), 2)
        self.assertEqual(set(codes), {"ok", "quota"})
        self.assertLessEqual(victim.files.catalog.sent_by(attacker.node_id), self.QUOTA)
        held = sum(victim.files.usage().values())
        self.assertLessEqual(held, self.QUOTA)

    async def test_concurrent_stores_cannot_pass_the_quota(self) -> None:
        victim, attacker, session = await self.pair("--no-relay")
        signer = attacker.identity.key
        blobs = [signed_blob(f"f{i}", 100_000, signer) for i in range(16)]
        # Every transfer starts before any ends.
        streams = [session.store(wire.Store(o, b, len(d), 1)) for o, b, d in blobs]
        for stream, (_, _, data) in zip(streams, blobs, strict=True):
            stream.write(data)
        outcomes = []
        for stream in streams:
            try:
                await stream.finish()
                outcomes.append("ok")
            except RemoteError as e:
                outcomes.append(e.code)
        self.assertEqual(outcomes.count("ok"), 2)
        self.assertLessEqual(victim.files.catalog.sent_by(attacker.node_id), self.QUOTA)
        self.assertEqual(
            victim.files.space.charged(attacker.node_id),
            victim.files.catalog.sent_by(attacker.node_id),
        )


class DeletionFloodTests(NodeTestCase):
    async def test_a_flood_of_deletions_is_paced_charged_and_not_passed_on(self) -> None:
        v_port = free_port()
        victim = self.make_node(v_port, org="victim", space=SpaceLimits(quota=10 << 20))
        attacker = self.make_node(peers=[v_port], org="attacker")
        honest = self.make_node(peers=[v_port], org="honest")
        await self.connected(victim, attacker)
        await self.connected(victim, honest)
        store = victim.store.root
        before = _stored_bytes(store)
        session = self.session(attacker, victim)
        warnings = logged(self, "asks faster than it reads the answers")
        # Deletions of ids never stored, all sent at once: answered at the victim's
        # pace (a burst, then ANSWER_RATE a second), the rest waiting meanwhile.
        sent = int(ANSWER_BURST) + 2 * MAX_WAITING
        replies = [
            session.request(delete_message(Tombstone.sign(attacker.identity.key, f"{i:064x}", 1)))
            for i in range(sent)
        ]
        for reply in replies:
            await reply  # each taken
        self.assertEqual(len(warnings), 1)  # and the link not read while many waited
        # Charged to the sender, a block each; kept as rows, not files and folders.
        self.assertEqual(victim.files.catalog.sent_by(attacker.node_id), sent * BLOCK)
        self.assertFalse((store / attacker.node_id).exists())
        grown = _stored_bytes(store) - before
        self.assertLess(grown, sent * 1024, f"{sent} deletions took {grown} bytes")
        # Nobody held those ids: the deletions went no further.
        self.assertEqual(honest.files.catalog.entries(attacker.node_id), [])


def _stored_bytes(store: Path) -> int:
    """The bytes of the store's files, but SQLite's write-ahead log (recycled, and as
    long as the groups its commits came in made it)."""
    files = [p for p in store.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))]
    return sum(p.stat().st_size for p in files)


class AuditTests(NodeTestCase):
    """A holder counts only while it proves it holds: storage audits."""

    async def network(self) -> tuple[NodeService, NodeService, Liar]:
        l_port, h_port = free_port(), free_port()
        liar_node = self.make_node(l_port, org="liar")
        honest = self.make_node(h_port, org="honest")
        victim = self.make_node(peers=[l_port, h_port], org="victim")
        await self.start(victim, liar_node, honest)
        await eventually(lambda: len(victim.registry.live()) == 2, "V's sessions")
        return victim, liar_node, Liar(liar_node)

    async def replicas(self, node: NodeService, name: str) -> int:
        [entry] = [e for e in await node.files.list_files() if e.name == name]
        return entry.replicas

    async def test_a_have_without_the_blob_is_not_counted(self) -> None:
        victim, _, liar = await self.network()
        liar.claim_have = True
        upload = victim.files.begin_put("f", len(NOTES), None)
        upload.write(NOTES)
        result = await upload.finish()
        self.assertEqual(result.replicas, 2)  # here and H; L said "have" and could not prove it
        [refused] = [p for p in result.peers if not p.ok]
        self.assertEqual(refused.org, "liar")
        self.assertIn("could not prove it", refused.error or "")

    async def test_a_holder_that_lost_the_blob_fails_its_audit_and_gets_it_again(self) -> None:
        victim, liar_node, liar = await self.network()
        blob, replicas = await put(victim, "f", REPORT)
        self.assertEqual(replicas, 3)
        key = BlobKey(victim.node_id, blob)
        entry = liar_node.files.catalog.get(key)
        assert entry is not None
        proof = liar_node.files.holdings.proof(key, entry)
        claim = wire.ListEntry(blob, entry.version, False, proof.hex())
        path = liar_node.store.path_for(key)
        path.unlink()  # L loses (or discards) it, and goes on claiming it
        liar.forge_listing = lambda reply: wire.ListReply(
            tuple(sorted({*reply.entries, claim}, key=lambda e: e.blob)), reply.more
        )
        self.assertEqual(await self.replicas(victim, "f"), 3)  # a claim, with its proof
        passed, failed = await victim.files.auditor.run()
        self.assertEqual((passed, failed), (1, 1))
        self.assertEqual(await self.replicas(victim, "f"), 2)
        audits = victim.api.status()["audits"]
        self.assertEqual((audits["passed"], audits["failed"]), (1, 1))
        # And it is sent the blob again, after which it proves it holds it.
        # Held once published (the file lands on disk a moment before its entry).
        await eventually(
            lambda: liar_node.files.holdings.held(key) is not None, "L to be sent the blob again"
        )
        liar.forge_listing = None
        session = self.session(victim, liar_node)
        self.assertTrue(await victim.files.auditor.audit(session, key, entry.version))
        self.assertEqual(await self.replicas(victim, "f"), 3)


class ForgedReplicaTests(NodeTestCase):
    """A holder checks the end of a replica too: its last chunk's signature."""

    async def test_a_replica_with_an_altered_or_missing_end_is_refused_and_not_kept(
        self,
    ) -> None:
        h_port = free_port()
        holder = self.make_node(h_port, org="holder")
        sender = self.make_node(peers=[h_port], org="sender")
        await self.connected(holder, sender)
        session = self.session(sender, holder)
        owner, blob, data = signed_blob("f", 100_000)
        altered = data[:-1] + bytes([data[-1] ^ 1])  # the last chunk's signature
        self.assertEqual(await store_blob(session, BlobKey(owner, blob), 1, altered), "bad_blob")
        cut = data[:-64]  # the signature of the last chunk left off
        self.assertEqual(await store_blob(session, BlobKey(owner, blob), 1, cut), "bad_blob")
        self.assertFalse(holder.store.exists(BlobKey(owner, blob)))
        self.assertIsNone(holder.files.catalog.get(BlobKey(owner, blob)))
        # The real blob is still taken: nothing of the refused ones was left behind.
        self.assertEqual(await store_blob(session, BlobKey(owner, blob), 1, data), "ok")


class CollectionTests(NodeTestCase):
    """V deletes a file H and L hold; L lies to have V's tombstones collected early."""

    async def test_a_liar_cannot_collect_a_deletion_a_node_away_has_not_confirmed(
        self,
    ) -> None:
        v_port, h_port = free_port(), free_port()
        h_dir = Path(self.mktemp())
        victim = self.make_node(v_port, org="victim")
        honest = self.make_node(h_port, peers=[v_port], org="honest", data_dir=h_dir)
        liar_node = self.make_node(peers=[v_port, h_port], org="liar")
        await self.connected(victim, honest, liar_node)
        liar = Liar(liar_node)
        victim.files.collector.collect_after = 0
        await put(victim, "doomed.bin", NOTES)
        key = victim.files.owner.key_for("doomed.bin")
        await eventually(lambda: honest.files.holdings.held(key) is not None, "H to hold it")
        kept = blob_path(liar_node, key.owner, key.blob).read_bytes()  # L keeps a copy
        version = victim.files.catalog.get(key).version  # type: ignore[union-attr]

        # H is away during the deletion; L confirms it, and names no node it has met.
        await honest.stopService()
        await eventually(lambda: len(victim.registry.live()) == 1, "V to see H go")
        await victim.files.delete("doomed.bin")
        tomb = liar_node.files.holdings.tombstone(key)
        assert tomb is not None
        liar.forge_horizon = naming_no_one
        self.assertEqual(await victim.files.collector.run(), 0)
        self.assertEqual(await victim.files.collector.run(), 0)
        self.assertIsNotNone(victim.files.holdings.tombstone(key))
        self.assertEqual(liar_node.files.horizons.version(victim.node_id), 0)

        # H is back, with the old copy. L offers it a horizon it signed itself: refused.
        honest = self.make_node(h_port, peers=[v_port], org="honest", data_dir=h_dir)
        await self.connected(victim, honest, liar_node)
        forged = Horizon.sign(liar_node.identity.key, tomb.version)
        with self.assertRaises(RemoteError) as refused:
            await self.session(liar_node, honest).request(horizon_message(victim.node_id, forged))
        self.assertEqual(refused.exception.code, wire.Code.BAD_SIGNATURE)
        # H took the tombstone (from V or L, when they met again) and confirms it to V.
        await eventually(
            lambda: honest.files.holdings.tombstone(key) is not None, "H to take the deletion"
        )
        self.assertFalse(honest.store.exists(key))
        self.assertEqual(await victim.files.collector.run(), 1)
        for node in (victim, honest, liar_node):
            await eventually(
                lambda node=node: node.files.holdings.tombstone(key) is None,  # type: ignore[misc]
                f"{node.org} to collect the tombstone",
            )
        # L replays the collected tombstone: refused, not recorded again.
        with self.assertRaises(RemoteError) as again:
            await self.session(liar_node, honest).request(delete_message(tomb))
        self.assertEqual(again.exception.code, wire.Code.HAVE)
        self.assertIsNone(honest.files.holdings.tombstone(key))

        # L pushes its old copy to H, which has no tombstone left to refuse it with:
        # V sees it at its next comparison with H, and deletes it again.
        self.assertEqual(
            await store_blob(self.session(liar_node, honest), key, version, kept), "ok"
        )
        self.assertTrue(honest.store.exists(key))
        await victim.files.sync.catch_up(self.session(victim, honest))
        await eventually(lambda: not honest.store.exists(key), "V to delete it again at H")
        written = victim.files.ledger.get(key.blob)
        assert written is not None
        self.assertTrue(written.deleted)
        self.assertGreater(written.version, victim.files.horizons.version(victim.node_id))
