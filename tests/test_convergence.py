"""Replicas converge on the newest version after outages: real node processes.

A peer that was away catches up on overwrites and deletions (tombstones), a node
that lost its store recovers without resurrecting deleted files, and in a line of
nodes the middle one relays each org's changes to the far end.
"""

from __future__ import annotations

import json
import shutil
import time
from functools import partial

import pytest

from dfs_twisted.launcher import NodeProcess, free_port

from .shared import ConvergenceTestCase, held, tombstones, wait_until

pytestmark = pytest.mark.processes


class AwayPeerTests(ConvergenceTestCase):
    def test_overwrites_and_deletes_made_while_away_reach_the_peer(self) -> None:
        owner_port, away_port = free_port(), free_port()
        owner = self.node("owner", owner_port, [])
        away = self.node("away", away_port, [owner_port])
        away.wait_peers(1)
        owner_id = owner.status()["node_id"]
        self.put(owner, "kept.txt", b"version one\n")
        self.put(owner, "doomed.txt", b"soon gone\n")
        self.put(owner, "untouched.txt", b"same all along\n")
        self.assertEqual(len(held(away, owner_id)), 3)

        away.stop()
        wait_until(lambda: owner.status()["peers"] == [], "the owner to see the peer go")
        self.put(owner, "kept.txt", b"version two\n")
        owner.dfs("rm", "doomed.txt")
        self.put(owner, "new.txt", b"made while away\n")

        away = self.node("away", away_port, [owner_port])
        wait_until(lambda: held(away, owner_id) == held(owner, owner_id), "the peer to catch up")
        # The deletion travelled as a tombstone, and stays recorded on both sides.
        self.assertEqual(tombstones(away, owner_id), tombstones(owner, owner_id))
        self.assertEqual(len(tombstones(owner, owner_id)), 1)
        self.assertEqual(self.ls(owner), {"kept.txt": 2, "new.txt": 2, "untouched.txt": 2})
        self.assertIn("caught up away: sent 3 changes", owner.log_path.read_text())
        # The peer serves the newest version: the owner loses its store and reads it back.
        owner.stop()
        shutil.rmtree(owner.data_dir / "store")
        owner = self.node("owner", owner_port, [])
        owner.wait_peers(1)
        self.assertEqual(self.get(owner, "kept.txt"), b"version two\n")
        self.assertNotEqual(owner.dfs("get", "doomed.txt", check=False).returncode, 0)


class RecoverTests(ConvergenceTestCase):
    def test_recover_takes_the_newest_version_and_keeps_deletions(self) -> None:
        # No relay: the peer that missed the deletion stays stale until the owner is back.
        a_port, b_port, c_port = free_port(), free_port(), free_port()
        a = self.node("a", a_port, [], "--no-relay")
        b = self.node("b", b_port, [a_port], "--no-relay")
        c = self.node("c", c_port, [a_port, b_port], "--no-relay")
        for node, peers in ((a, 2), (b, 2), (c, 2)):
            node.wait_peers(peers)
        a_id = a.status()["node_id"]
        self.put(a, "deleted.txt", b"must not come back\n")
        self.put(a, "changed.txt", b"old\n")

        c.stop()
        wait_until(lambda: len(a.status()["peers"]) == 1, "a to see c go")
        a.dfs("rm", "deleted.txt")
        self.put(a, "changed.txt", b"new\n")
        # a loses its disk; c comes back holding the stale versions.
        a.stop()
        shutil.rmtree(a.data_dir / "store")
        c = self.node("c", c_port, [a_port, b_port], "--no-relay")
        a = self.node("a", a_port, [], "--no-relay")
        a.wait_peers(2)
        self.assertEqual(len(held(c, a_id)), 2)

        out = a.dfs("recover").stdout.decode()
        # The newest version of changed.txt, and nothing of the deleted file.
        self.assertEqual(out.splitlines(), ["recovered changed.txt", "recovered 1 file"])
        self.assertEqual(self.get(a, "changed.txt"), b"new\n")
        missing = a.dfs("get", "deleted.txt", check=False)
        self.assertNotEqual(missing.returncode, 0)
        self.assertEqual(self.ls(a), {"changed.txt": 3})
        # And the recovered owner brings the stale peer up to date.
        wait_until(lambda: held(c, a_id) == held(a, a_id), "c to drop the deleted file")


class RelayTests(ConvergenceTestCase):
    """A - B - C in a line: A and C never meet."""

    def line(self, *middle_flags: str) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
        a_port, b_port = free_port(), free_port()
        a = self.node("a", a_port, [])
        b = self.node("b", b_port, [a_port], *middle_flags)
        c = self.node("c", free_port(), [b_port])
        b.wait_peers(2)
        return a, b, c

    def test_middle_node_relays_puts_and_deletes(self) -> None:
        a, b, c = self.line()
        a_id = a.status()["node_id"]
        self.put(a, "far.txt", b"to the far end\n")
        wait_until(lambda: len(held(c, a_id)) == 1, "c to get a's file through b")
        self.assertEqual(held(c, a_id), held(a, a_id))
        # C verified A's signature: b could not have altered it. a counts b only (c is
        # not its peer), and a's file survives a losing its store with b gone too.
        b.stop()
        a.stop()
        shutil.rmtree(a.data_dir / "store")
        b = self.node("b", b.port, [a.port])
        a = self.node("a", a.port, [])
        b.wait_peers(2)
        a.dfs("rm", "far.txt")  # a has nothing left, but b holds it
        wait_until(lambda: held(c, a_id) == {}, "the deletion to reach c through b")
        self.assertEqual(tombstones(c, a_id), tombstones(a, a_id))

    def test_no_relay_keeps_changes_to_direct_peers(self) -> None:
        a_port, b_port = free_port(), free_port()
        a = self.node("a", a_port, [])
        b = self.node("b", b_port, [a_port], "--no-relay")
        b.wait_peers(1)
        a_id, b_id = a.status()["node_id"], b.status()["node_id"]
        self.put(a, "near.txt", b"only for direct peers\n")
        self.put(b, "own.txt", b"b's own file\n")
        self.assertEqual(len(held(b, a_id)), 1)
        c = self.node("c", free_port(), [b_port])
        # b's catch-up of c ends with this line: by then a relaying b would have sent 2.
        wait_until(lambda: "caught up c: sent 1 changes" in b.log_path.read_text(), "catch-up")
        self.assertEqual(len(held(c, b_id)), 1)
        self.assertEqual(held(c, a_id), {})


class PeriodicSyncTests(ConvergenceTestCase):
    def test_a_refused_replica_arrives_once_there_is_room(self) -> None:
        holder_port = free_port()
        holder = self.node("holder", holder_port, [], "--quota", "2M")
        owner = self.node("owner", free_port(), [holder_port], "--sync-period", "1s")
        owner.wait_peers(1)
        owner_id = owner.status()["node_id"]
        self.put(owner, "one.bin", b"1" * 1_500_000)
        refused = owner.dfs("put", "-", "--name", "two.bin", input=b"2" * 1_500_000)
        self.assertIn("quota", refused.stderr.decode())
        self.assertEqual(self.ls(owner), {"one.bin": 2, "two.bin": 1})
        # Connected all along: no reconnect will catch the holder up, the periodic sync does.
        owner.dfs("rm", "one.bin")
        wait_until(lambda: self.ls(owner) == {"two.bin": 2}, "two.bin to reach the holder")
        self.assertEqual(held(holder, owner_id), held(owner, owner_id))


class ListAfterLossTests(ConvergenceTestCase):
    def test_ls_shows_what_peers_hold_after_a_loss(self) -> None:
        owner_port = free_port()
        owner = self.node("owner", owner_port, [])
        holder = self.node("holder", free_port(), [owner_port])
        holder.wait_peers(1)
        self.put(owner, "kept.txt", b"kept\n")
        self.put(owner, "gone.txt", b"deleted\n")
        owner.dfs("rm", "gone.txt")
        owner.stop()
        shutil.rmtree(owner.data_dir / "store")
        owner = self.node("owner", owner_port, [])
        owner.wait_peers(1)
        rows = json.loads(owner.dfs("ls", "--json").stdout)
        self.assertEqual(rows, [{"name": "kept.txt", "size": 5, "replicas": 1}])
        table = owner.dfs("ls").stdout.decode()
        self.assertIn("(on peers only)", table)
        self.assertIn("1 held by peers only: dfs recover brings them back here", table)
        owner.dfs("recover")
        self.assertEqual(self.ls(owner), {"kept.txt": 2})
        self.assertNotIn("peers only", owner.dfs("ls").stdout.decode())


class TombstoneCollectionTests(ConvergenceTestCase):
    """The seed's three nodes, each comparing every second and collecting at once."""

    FLAGS = ("--sync-period", "1s", "--collect-after", "0")

    def test_collected_only_once_the_node_away_is_back_and_confirmed(self) -> None:
        a_port, b_port, c_port = free_port(), free_port(), free_port()
        a = self.node("a", a_port, [], *self.FLAGS)
        b = self.node("b", b_port, [a_port], *self.FLAGS)
        c = self.node("c", c_port, [a_port, b_port], *self.FLAGS)
        for node in (a, b, c):
            node.wait_peers(2)
        a_id, c_id = a.status()["node_id"], c.status()["node_id"]
        self.put(a, "kept.txt", b"stays\n")
        self.put(a, "doomed.txt", b"must not come back\n")
        self.assertEqual(len(held(c, a_id)), 2)

        c.stop()
        wait_until(lambda: len(a.status()["peers"]) == 1, "a to see c go")
        a.dfs("rm", "doomed.txt")
        [doomed] = tombstones(a, a_id)
        # c holds the blob and has not confirmed: a says so, and nothing is collected.
        wait_until(
            lambda: (
                f"1 deletions kept until 1 nodes confirm them: {c_id}" in a.log_path.read_text()
            ),
            "a to wait for c",
        )
        self.assertEqual(tombstones(a, a_id), {doomed})
        self.assertEqual(tombstones(b, a_id), {doomed})

        c = self.node("c", c_port, [a_port, b_port], *self.FLAGS)
        for node in (a, b, c):
            wait_until(
                partial(lambda n: tombstones(n, a_id) == set(), node), f"{node.port} collects"
            )
        self.assertIn("collected 1 deletions", a.log_path.read_text())
        self.assertEqual(held(c, a_id), held(a, a_id))
        self.assertEqual(len(held(c, a_id)), 1)
        # Compared every second: the tombstone does not come back, nor does the file.
        time.sleep(3)
        for node in (a, b, c):
            self.assertEqual(tombstones(node, a_id), set())
            self.assertEqual(held(node, a_id), held(a, a_id))
        self.assertEqual(self.ls(a), {"kept.txt": 3})
        self.assertNotEqual(a.dfs("get", "doomed.txt", check=False).returncode, 0)
