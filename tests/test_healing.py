"""Reads that heal while they stream, and forged plaintext that never leaves the node.

All copies of a version are byte-identical: a read that meets a damaged chunk, or
a holder that goes away, goes on from the next holder at that chunk. No plaintext
from a copy is released before the owner's signature over its chunk is checked.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dfs_twisted.crypto import SIGNATURE_SIZE, file_key, parse_header
from dfs_twisted.files import DamagedBlob
from dfs_twisted.node import NodeService

from .inprocess import BytesConsumer, NodeTestCase, blob_path, eventually, get
from .liars import Liar

pytestmark = pytest.mark.inprocess

# Five 1 MiB chunks and a bit: a damaged chunk in the middle of the stream.
DATA = os.urandom(5 * (1 << 20) + 12345)


class HealingTests(NodeTestCase):
    async def network(self) -> tuple[NodeService, Liar, NodeService]:
        """V dials L first (L is asked first), then H dials V; all hold V's file."""
        victim, liar_node, honest, self.blob = await self.liar_then_honest("big.bin", DATA)
        return victim, Liar(liar_node), honest

    def chunk_offset(self, node: NodeService, index: int) -> int:
        path = blob_path(node, node.node_id, self.blob)
        with path.open("rb") as f:
            return parse_header(f.read(16384)).chunk_offset(index)

    async def test_a_damaged_local_copy_heals_in_the_middle_of_a_read(self) -> None:
        victim, _, _ = await self.network()
        path = blob_path(victim, victim.node_id, self.blob)
        good = path.read_bytes()
        damaged = bytearray(good)
        damaged[self.chunk_offset(victim, 3) + 100] ^= 0x01
        path.write_bytes(damaged)
        data, source = await get(victim, "big.bin")
        self.assertEqual(data, DATA)
        self.assertEqual(source, "local")  # the response began from the local copy
        # The local copy is whole again: its good chunks and a peer's.
        await eventually(lambda: path.exists() and path.read_bytes() == good, "the repair")

    async def test_a_damaged_chunk_from_a_peer_is_read_from_the_next_holder(self) -> None:
        victim, liar, _ = await self.network()
        liar.flip_at = self.chunk_offset(victim, 2) + 7
        blob_path(victim, victim.node_id, self.blob).unlink()
        data, source = await get(victim, "big.bin")
        self.assertEqual((data, source), (DATA, "liar"))
        self.assertEqual(await get(victim, "big.bin"), (DATA, "local"))  # restored

    async def test_a_holder_that_goes_away_mid_read_is_replaced(self) -> None:
        victim, liar, _ = await self.network()
        liar.cut_after = self.chunk_offset(victim, 2)
        blob_path(victim, victim.node_id, self.blob).unlink()
        data, _ = await get(victim, "big.bin")
        self.assertEqual(data, DATA)

    async def test_forged_plaintext_never_leaves_the_node(self) -> None:
        # L holds V's read key: it can make chunks that the data key opens, but it
        # cannot sign them as V.
        victim, liar, honest = await self.network()
        path = blob_path(victim, victim.node_id, self.blob)
        liar.forged[self.blob] = forge(path.read_bytes(), victim)
        path.unlink()
        data, _ = await get(victim, "big.bin")
        self.assertEqual(data, DATA)  # from H, after L's first chunk failed
        # With H gone, L alone: the read fails without one forged byte released.
        await honest.stopService()
        path.unlink()
        victim.files.holdings.held(victim.files.owner.key_for("big.bin"))
        download = await victim.files.open_download("big.bin")
        consumer: Any = BytesConsumer()
        with self.assertRaises(DamagedBlob):
            await download.stream_to(consumer)
        self.assertEqual(consumer.value, b"")


def forge(blob: bytes, owner: NodeService) -> bytes:
    """Other plaintext in ``blob``'s chunks, sealed with its own data key, signed by nobody."""
    header = parse_header(blob)
    aead = AESGCM(file_key(owner.org_key, header).data_key)
    evil = os.urandom(len(DATA))
    chunks = [evil[i : i + header.chunk_size] for i in range(0, len(evil), header.chunk_size)]
    pieces = [header.raw]
    for index, chunk in enumerate(chunks):
        nonce = struct.pack(">7sIB", header.nonce_prefix, index, int(index == len(chunks) - 1))
        pieces += [aead.encrypt(nonce, chunk, header.digest), bytes(SIGNATURE_SIZE)]
    return b"".join(pieces)
