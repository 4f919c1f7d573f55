"""Twelve node processes with a network key and --replicas 3 (or --erasure 3-of-6):
placement, loss, repair.

Every node is its own `twistd -n dfs`; they all link to each other. Each file of
the owner is on exactly 3 nodes (the owner and 2 peers); the two peers holding
most are killed and every file still reads (with the owner's own copy gone
wherever a live peer holds one, from that peer); after --repair-after the owner
puts the lost copies on the next peers; when the two come back the copies made
meanwhile are released, and each file is on exactly 2 peers again.
With --erasure 3-of-6 the same story with shares: each of the 6 shares of a file
on its own peer, three peers killed, every file rebuilt from the shares left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.crypto import share_id
from dfs_twisted.launcher import BIN, NodeProcess, free_port
from tests.shared import wait_until

pytestmark = pytest.mark.processes

NODES = 12
FILES = 12
REPLICAS = 3  # copies of each file: the owner's and two peers'
K, N = 3, 6


class NetworkCase(SynchronousTestCase):
    redundancy: tuple[str, ...]

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-placement-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        key = self.dir / "network.key"
        made = subprocess.run(
            [str(BIN / "dfs"), "network-key", "create", str(key)], capture_output=True, timeout=60
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        ports = [free_port() for _ in range(NODES)]
        flags = [
            "--network-key",
            str(key),
            *self.redundancy,
            "--repair-after",
            "3s",
            "--sync-period",
            "1s",
        ]
        # Each node dials the ones before it: one link per pair, all linked.
        self.nodes = [
            NodeProcess(port, self.dir / f"n{i}", ports[:i], org=f"org{i}", extra=flags)
            for i, port in enumerate(ports)
        ]
        for node in self.nodes:
            self.addCleanup(node.stop)
            node.start()
        for node in self.nodes:
            node.wait_ready(60)
        self.owner = self.nodes[0]
        self.owner.wait_peers(NODES - 1, timeout=120)
        self.owner_id: str = self.owner.status()["node_id"]

    def blob_path(self, node: NodeProcess, blob: str) -> Path:
        return node.data_dir / "store" / self.owner_id / blob[:2] / blob[2:4] / blob

    def holders(self, blob: str, among: list[NodeProcess]) -> list[NodeProcess]:
        return [n for n in among if self.blob_path(n, blob).is_file()]

    def put_files(self, sizes: list[int]) -> tuple[dict[str, bytes], list[dict[str, object]]]:
        """Put a file of each size; their blob ids and contents, and put's answers."""
        blobs: dict[str, bytes] = {}
        answers = []
        for i, size in enumerate(sizes):
            data = os.urandom(size)
            source = self.dir / f"f{i}"
            source.write_bytes(data)
            out = self.owner.dfs("put", str(source), "--name", f"f{i}", "--json")
            answer = json.loads(out.stdout)
            blobs[answer["blob"]] = data
            answers.append(answer)
        return blobs, answers

    def read_without_local_copies(
        self, blobs: dict[str, bytes], alive: list[NodeProcess], parts: int = 1
    ) -> None:
        """Every file still reads, the owner's own copy gone wherever ``alive`` still
        holds a copy (or, with ``parts`` > 1, shares) of it."""
        for blob in blobs:
            held = [share_id(blob, i) for i in range(parts)] if parts > 1 else [blob]
            if any(self.holders(part, alive) for part in held):
                self.blob_path(self.owner, blob).unlink()
        for i, data in enumerate(blobs.values()):
            got = self.owner.dfs("get", f"f{i}", "-o", str(self.dir / f"got{i}"))
            self.assertEqual(got.returncode, 0, got.stderr)
            self.assertEqual((self.dir / f"got{i}").read_bytes(), data)

    def kill_busiest(self, count: int, parts: list[str]) -> tuple[list[NodeProcess], ...]:
        """Kill (SIGKILL: a power cut) the ``count`` peers holding most of ``parts``;
        the killed, and the peers left."""
        peers = self.nodes[1:]
        load = Counter(n.port for blob in parts for n in self.holders(blob, peers))
        lost = [n for n in peers if n.port in {p for p, _ in load.most_common(count)}]
        for node in lost:
            node.stop(signal.SIGKILL)
        return lost, [n for n in peers if n not in lost]

    def bring_back(self, lost: list[NodeProcess]) -> None:
        for node in lost:
            node.start()
            node.wait_ready(60)
        self.owner.wait_peers(NODES - 1, timeout=120)


class ReplicasNetworkTests(NetworkCase):
    redundancy = ("--replicas", str(REPLICAS))

    def copies(self, blobs: dict[str, bytes], among: list[NodeProcess]) -> Counter[int]:
        """How many files have how many peer copies (a histogram)."""
        return Counter(len(self.holders(blob, among)) for blob in blobs)

    def test_three_copies_survive_two_losses_are_repaired_and_surplus_released(self) -> None:
        peers = self.nodes[1:]
        blobs, answers = self.put_files([20_000 + i for i in range(FILES)])
        self.assertEqual({a["replicas"] for a in answers}, {REPLICAS})
        self.assertEqual(self.copies(blobs, peers), Counter({REPLICAS - 1: FILES}))

        # The two peers holding most of the files go.
        lost, alive = self.kill_busiest(2, list(blobs))
        self.read_without_local_copies(blobs, alive)

        # After --repair-after the owner places the copies lost on the next peers.
        wait_until(
            lambda: self.copies(blobs, alive) == Counter({REPLICAS - 1: FILES}),
            "every file back to 3 live copies (2 peers)",
            timeout=120,
        )
        status = self.owner.status()
        self.assertEqual(status["storage"]["under_replicated"], 0)

        # The two come back with their copies: the extra ones made meanwhile go.
        self.bring_back(lost)
        wait_until(
            lambda: self.copies(blobs, peers) == Counter({REPLICAS - 1: FILES}),
            "every file on exactly 2 peers again",
            timeout=120,
        )
        listing = json.loads(self.owner.dfs("ls", "--long", "--json").stdout)
        self.assertEqual(len(listing), FILES)
        for row in listing:
            self.assertEqual((row["replicas"], row["wanted"]), (REPLICAS, REPLICAS))


class ErasureNetworkTests(NetworkCase):
    redundancy = ("--erasure", f"{K}-of-{N}")

    def shares(self, blobs: dict[str, bytes], among: list[NodeProcess]) -> Counter[tuple[int, int]]:
        """How many files have how many distinct shares held, by how many holders
        in all (a histogram of (shares held, copies of shares))."""
        found: Counter[tuple[int, int]] = Counter()
        for blob in blobs:
            held = [len(self.holders(share_id(blob, i), among)) for i in range(N)]
            found[(sum(h > 0 for h in held), sum(held))] += 1
        return found

    def test_six_shares_survive_three_losses_are_repaired_and_surplus_released(self) -> None:
        peers = self.nodes[1:]
        # One file of several segments (3 MiB each with 3-of-6), the others small.
        blobs, answers = self.put_files([7 << 20] + [20_000 + i for i in range(FILES - 1)])
        self.assertEqual({(a["replicas"], a["shares"]) for a in answers}, {(1, N)})
        # Each share on its own peer, and no peer holds a whole file.
        self.assertEqual(self.shares(blobs, peers), Counter({(N, N): FILES}))
        self.assertEqual([b for b in blobs if self.holders(b, peers)], [])

        # The three peers holding most shares go: any K of the six rebuild a file.
        parts = [share_id(blob, i) for blob in blobs for i in range(N)]
        lost, alive = self.kill_busiest(N - K, parts)
        self.read_without_local_copies(blobs, alive, N)

        # After --repair-after the owner makes the missing shares again, elsewhere.
        wait_until(
            lambda: self.shares(blobs, alive) == Counter({(N, N): FILES}),
            "every file back to 6 live shares",
            timeout=120,
        )
        self.assertEqual(self.owner.status()["storage"]["under_replicated"], 0)

        # The three come back with their shares: the ones made meanwhile go.
        self.bring_back(lost)
        wait_until(
            lambda: self.shares(blobs, peers) == Counter({(N, N): FILES}),
            "every share on exactly one peer again",
            timeout=120,
        )
        listing = json.loads(self.owner.dfs("ls", "--long", "--json").stdout)
        self.assertEqual(len(listing), FILES)
        for row in listing:
            self.assertEqual((row["replicas"], row["shares"], row["wanted"]), (1, N, N))
