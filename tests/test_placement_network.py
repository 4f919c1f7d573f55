"""Twelve node processes with a network key and --replicas 3: placement, loss, repair.

Every node is its own `twistd -n dfs`; they all link to each other. Each file of
the owner is on exactly 3 peers; two of them are killed and every file still
reads (with the owner's own copies gone too, from the remaining holders); after
--repair-after the owner puts third copies elsewhere; when the two come back the
copies made meanwhile are released, and each file is on exactly 3 peers again.
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

from dfs_twisted.launcher import BIN, NodeProcess, free_port
from tests.shared import wait_until

pytestmark = pytest.mark.processes

NODES = 12
FILES = 12
REPLICAS = 3


class ReplicasNetworkTests(SynchronousTestCase):
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
            "--replicas",
            str(REPLICAS),
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

    def copies(self, blobs: dict[str, bytes], among: list[NodeProcess]) -> Counter[int]:
        """How many files have how many peer copies (a histogram)."""
        return Counter(len(self.holders(blob, among)) for blob in blobs)

    def test_three_copies_survive_two_losses_are_repaired_and_surplus_released(self) -> None:
        peers = self.nodes[1:]
        blobs: dict[str, bytes] = {}
        for i in range(FILES):
            data = os.urandom(20_000 + i)
            source = self.dir / f"f{i}"
            source.write_bytes(data)
            out = self.owner.dfs("put", str(source), "--name", f"f{i}", "--json")
            answer = json.loads(out.stdout)
            self.assertEqual(answer["replicas"], 1 + REPLICAS)
            blobs[answer["blob"]] = data
        self.assertEqual(self.copies(blobs, peers), Counter({REPLICAS: FILES}))

        # The two peers holding most of the files go (a power cut: SIGKILL).
        load = Counter(n.port for blob in blobs for n in self.holders(blob, peers))
        lost = [n for n in peers if n.port in {p for p, _ in load.most_common(2)}]
        for node in lost:
            node.stop(signal.SIGKILL)
        alive = [n for n in peers if n not in lost]
        # Every file still reads, even with the owner's own copies gone.
        for blob in blobs:
            self.blob_path(self.owner, blob).unlink()
        for i, data in enumerate(blobs.values()):
            got = self.owner.dfs("get", f"f{i}", "-o", str(self.dir / f"got{i}"))
            self.assertEqual(got.returncode, 0, got.stderr)
            self.assertEqual((self.dir / f"got{i}").read_bytes(), data)

        # After --repair-after the owner places third copies on the next peers.
        wait_until(
            lambda: self.copies(blobs, alive) == Counter({REPLICAS: FILES}),
            "every file back to 3 live copies",
            timeout=120,
        )
        status = self.owner.status()
        self.assertEqual(status["storage"]["under_replicated"], 0)

        # The two come back with their copies: the extra ones made meanwhile go.
        for node in lost:
            node.start()
            node.wait_ready(60)
        self.owner.wait_peers(NODES - 1, timeout=120)
        wait_until(
            lambda: self.copies(blobs, peers) == Counter({REPLICAS: FILES}),
            "every file on exactly 3 peers again",
            timeout=120,
        )
        listing = json.loads(self.owner.dfs("ls", "--long", "--json").stdout)
        self.assertEqual(len(listing), FILES)
        for row in listing:
            self.assertEqual((row["replicas"], row["wanted"]), (1 + REPLICAS, 1 + REPLICAS))
