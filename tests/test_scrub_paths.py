"""The scrub's repairs against real nodes in this process: a missing replica, a blob no
peer has a good copy of, and the order in which peers are asked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dfs_twisted.launcher import free_port
from dfs_twisted.node import NodeService
from dfs_twisted.store import BlobKey

from .inprocess import NodeTestCase, blob_path, get, put
from .liars import Liar

pytestmark = pytest.mark.inprocess

DATA = os.urandom(3 * (1 << 20) + 999)


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


class ScrubRepairTests(NodeTestCase):
    async def pair(self) -> tuple[NodeService, NodeService, str]:
        """A's file, replicated on B (which dials A)."""
        a_port = free_port()
        a = self.make_node(a_port, org="a")
        b = self.make_node(peers=[a_port], org="b")
        await self.connected(a, b)
        blob, replicas = await put(a, "scrubbed.bin", DATA)
        self.assertEqual(replicas, 2)
        return a, b, blob

    async def test_a_missing_replica_is_replaced(self) -> None:
        a, b, blob = await self.pair()
        replica = blob_path(b, a.node_id, blob)
        good = replica.read_bytes()
        replica.unlink()
        report = await b.scrubber.run()
        self.assertEqual((report.checked, report.damaged, report.repaired), (1, 1, 1))
        self.assertEqual(report.problems, [f"{blob}: missing; replaced from a"])
        self.assertEqual(replica.read_bytes(), good)
        entry = b.files.catalog.get(BlobKey(a.node_id, blob))
        self.assertTrue(entry is not None and not entry.deleted)

    async def test_no_peer_had_a_good_copy(self) -> None:
        a, b, blob = await self.pair()
        middle = len(DATA) // 2
        flip(blob_path(a, a.node_id, blob), middle)
        flip(blob_path(b, a.node_id, blob), middle)
        report = await b.scrubber.run()
        self.assertEqual((report.checked, report.damaged, report.repaired), (1, 1, 0))
        [problem] = report.problems
        self.assertTrue(problem.startswith(f"{blob}: "), problem)
        self.assertTrue(problem.endswith("; no peer had a good copy"), problem)
        # The damaged copy is gone, and none of A's was taken in its place.
        self.assertFalse(blob_path(b, a.node_id, blob).exists())
        self.assertIsNone(b.files.catalog.get(BlobKey(a.node_id, blob)))
        self.assertEqual(b.scrubber.status()["last"]["repaired"], 0)


class AskedLastTests(NodeTestCase):
    async def network(self) -> tuple[NodeService, Liar, NodeService, str]:
        """V dials L first (L is asked first), then H dials V; all hold V's file."""
        victim, liar_node, honest, blob = await self.liar_then_honest("asked.bin", DATA)
        self.assertEqual([s.info.org for s in victim.registry.live()], ["liar", "honest"])
        return victim, Liar(liar_node), honest, blob

    def lose_local_copy(self, victim: NodeService, blob: str) -> None:
        blob_path(victim, victim.node_id, blob).unlink()
        victim.files.holdings.held(BlobKey(victim.node_id, blob))

    async def test_a_peer_that_served_a_damaged_copy_is_asked_last_by_reads(self) -> None:
        victim, liar, _, blob = await self.network()
        liar.flip_at = 2 << 20
        self.lose_local_copy(victim, blob)
        self.assertEqual(await get(victim, "asked.bin"), (DATA, "liar"))  # healed from H
        self.lose_local_copy(victim, blob)
        self.assertEqual(await get(victim, "asked.bin"), (DATA, "honest"))

    async def test_a_peer_that_served_a_damaged_copy_is_asked_last_by_the_scrub(self) -> None:
        victim, liar, _, blob = await self.network()
        liar.flip_at = 2 << 20
        self.lose_local_copy(victim, blob)
        await get(victim, "asked.bin")
        # L serves good copies again; it is still asked last for this blob.
        liar.flip_at = None
        path = blob_path(victim, victim.node_id, blob)
        flip(path, len(DATA) // 2)
        report = await victim.scrubber.run()
        self.assertEqual((report.damaged, report.repaired), (1, 1))
        [problem] = report.problems
        self.assertTrue(problem.endswith("; replaced from honest"), problem)
