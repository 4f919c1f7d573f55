"""A node directory with blobs of format 2 (tests/data/v2-node, written by the v2 code).

At start-up the node rewrites its own files in format 3, as new versions that its
peers then take; it still verifies and serves the format-2 replica it holds for
another org; and the tombstone files of the old store move into the index.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from dfs_twisted.crypto import FORMAT_VERSION, parse_header
from dfs_twisted.files import FileNotFound
from dfs_twisted.launcher import free_port
from dfs_twisted.store import BlobKey

from .inprocess import NodeTestCase, eventually, get

pytestmark = pytest.mark.inprocess

FIXTURE = Path(__file__).parent / "data" / "v2-node"


def fixture_copy(where: Path) -> Path:
    """The v2 node directory, as a node finds it (git keeps no modes)."""
    shutil.copytree(FIXTURE, where)
    private = where / "private"
    private.chmod(0o700)
    for path in private.iterdir():
        path.chmod(0o600)
    return where


def contents() -> tuple[bytes, bytes]:
    rnd = random.Random(7)
    small = bytes(rnd.getrandbits(8) for _ in range(1000))
    big = bytes(rnd.getrandbits(8) for _ in range(200_000))
    return small, big


class MigrationTests(NodeTestCase):
    async def test_a_v2_node_rewrites_its_own_files_and_keeps_reading_others(self) -> None:
        data_dir = fixture_copy(Path(self.mktemp()))
        other = json.loads((data_dir / "other.json").read_text())["node_id"]
        node = self.make_node(data_dir=data_dir, org="old")
        await node.ready
        small, big = contents()
        self.assertEqual(await get(node, "notes.txt"), (small, "local"))
        self.assertEqual(await get(node, "big.bin"), (big, "local"))
        for name in ("notes.txt", "big.bin"):
            key = node.files.owner.key_for(name)
            with node.store.path_for(key).open("rb") as f:
                header = parse_header(f.read(16384))
            self.assertEqual(header.format, FORMAT_VERSION)
            self.assertGreater(header.version, 1_700_000_000_000_000_004)
            written = node.ledger.get(key.blob)
            assert written is not None
            self.assertEqual((written.name, written.version), (name, header.version))
        with self.assertRaises(FileNotFound):
            await node.files.open_download("gone.txt")
        self.assertEqual(list(node.store.root.rglob("*.tomb")), [])  # moved into the index
        # The other org's replica stays in format 2: still checked whole by the scrub.
        self.assertEqual(len(node.files.catalog.live(other)), 1)
        report = await node.scrubber.run()
        self.assertEqual((report.checked, report.damaged), (3, 0))
        # A peer takes the new versions.
        peer = self.make_node(peers=[node.port], org="peer")
        await self.connected(node, peer)

        def has_them() -> bool:
            held = {
                blob: peer.files.catalog.get(BlobKey(node.node_id, blob))
                for blob in node.files.catalog.live(node.node_id)
            }
            return all(
                e is not None and e == node.files.catalog.get(BlobKey(node.node_id, b))
                for b, e in held.items()
            )

        await eventually(has_them, "the peer to take the rewritten files")

    async def test_the_rewrite_happens_once(self) -> None:
        data_dir = fixture_copy(Path(self.mktemp()))
        node = self.make_node(data_dir=data_dir, port=free_port())
        await node.ready
        key = node.files.owner.key_for("notes.txt")
        first = node.files.catalog.get(key)
        await node.stopService()
        again = self.make_node(data_dir=data_dir, port=free_port())
        await again.ready
        self.assertEqual(again.files.catalog.get(key), first)
