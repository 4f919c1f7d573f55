"""Safeguards proven by attacking them through the real protocol, in-process.

Each class plays one attack against real nodes over loopback TLS and checks the
node refuses it and keeps nothing of it. Every test here was checked the hard
way: with the safeguard it names removed from the code, it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import task
from twisted.internet.endpoints import TCP4ClientEndpoint

from dfs_twisted import wire
from dfs_twisted.admission import Admission, NetworkKey
from dfs_twisted.crypto import (
    MIN_CHUNK_SIZE,
    SIGNATURE_SIZE,
    TAG,
    Encryptor,
    OrgKey,
    parse_header,
)
from dfs_twisted.launcher import free_port
from dfs_twisted.mux import OutgoingStream
from dfs_twisted.node import NodeService
from dfs_twisted.protocol import PeerProtocol
from dfs_twisted.session import RemoteError, SessionClosed
from dfs_twisted.space import SpaceLimits
from dfs_twisted.store import BlobKey
from dfs_twisted.transport import TLSClientEndpoint

from .environment import cannot_run
from .inprocess import NodeTestCase, eventually, reactor, start_node
from .liars import store_blob

pytestmark = pytest.mark.inprocess

CHUNK = MIN_CHUNK_SIZE  # small chunks: many of them in a small blob
SEALED_CHUNK = CHUNK + TAG + SIGNATURE_SIZE  # a middle chunk as stored: ciphertext, signature
V2_NODE = Path(__file__).parent / "data" / "v2-node"


@dataclass(frozen=True)
class SignedBlob:
    """A real blob of a fresh org, and where its parts lie."""

    key: BlobKey
    version: int
    data: bytes
    header_size: int

    def chunk(self, index: int) -> int:
        """Offset of chunk ``index``'s ciphertext."""
        return self.header_size + index * SEALED_CHUNK

    def signature(self, index: int) -> int:
        """Offset of the signature of middle chunk ``index``."""
        return self.chunk(index) + CHUNK + TAG

    def flipped(self, at: int) -> bytes:
        data = bytearray(self.data)
        data[at] ^= 0x01
        return bytes(data)


def signed_blob(chunks: float = 3.5) -> SignedBlob:
    enc = Encryptor(OrgKey.generate(), Ed25519PrivateKey.generate(), "report", 1, chunk_size=CHUNK)
    body = b"".join([enc.header, *enc.update(os.urandom(int(chunks * CHUNK))), enc.finalize()])
    return SignedBlob(BlobKey(enc.owner, enc.blob), 1, body, len(enc.header))


def v2_blob() -> SignedBlob:
    """The format-2 blob (one signature over the whole blob) another org left with a v2 node."""
    owner = json.loads((V2_NODE / "other.json").read_text())["node_id"]
    [path] = [p for p in (V2_NODE / "store" / owner).rglob("*") if p.is_file()]
    data = path.read_bytes()
    header = parse_header(data[:16384])
    return SignedBlob(BlobKey(owner, path.name), header.version, data, len(header.raw))


class ReplicaSignatureTests(NodeTestCase):
    """A holder checks the owner's signature over every chunk of a replica it receives.

    The sender relays a blob of a third org (allowed, as a relaying node), with a
    valid header and one byte altered after it.
    """

    async def pair(self) -> tuple[NodeService, NodeService, PeerProtocol]:
        h_port = free_port()
        holder = self.make_node(h_port, org="holder")
        sender = self.make_node(peers=[h_port], org="sender")
        await self.connected(holder, sender)
        return holder, sender, self.session(sender, holder)

    async def assert_nothing_kept(self, holder: NodeService, blob: SignedBlob) -> None:
        store = holder.store.root
        await eventually(lambda: not any((store / "tmp").iterdir()), "the partial replica gone")
        self.assertFalse(holder.store.exists(blob.key))
        self.assertEqual(list((store / blob.key.owner).rglob("*")), [])
        holdings = holder.files.holdings
        self.assertIsNone(holdings.catalog.get(blob.key))
        self.assertNotIn(blob.key, [row.key for row in holdings.index.rows()])

    async def refused_then_the_real_one_taken(self, blob: SignedBlob, altered: bytes) -> None:
        holder, _, session = await self.pair()
        self.assertEqual(await store_blob(session, blob.key, blob.version, altered), "bad_blob")
        await self.assert_nothing_kept(holder, blob)
        # The real blob goes in after that: the refusal was for the altered byte.
        self.assertEqual(await store_blob(session, blob.key, blob.version, blob.data), "ok")
        with holder.store.path_for(blob.key).open("rb") as f:
            self.assertEqual(f.read(), blob.data)
        self.assertIsNotNone(holder.files.holdings.catalog.get(blob.key))

    async def test_altered_middle_chunk_refused(self) -> None:
        blob = signed_blob()
        await self.refused_then_the_real_one_taken(blob, blob.flipped(blob.chunk(1) + 100))

    async def test_altered_middle_chunk_signature_refused(self) -> None:
        blob = signed_blob()
        await self.refused_then_the_real_one_taken(blob, blob.flipped(blob.signature(0) + 5))

    async def test_altered_last_chunk_refused(self) -> None:
        blob = signed_blob()
        await self.refused_then_the_real_one_taken(blob, blob.flipped(blob.chunk(3) + 10))

    async def test_altered_last_signature_refused(self) -> None:
        blob = signed_blob()
        await self.refused_then_the_real_one_taken(blob, blob.flipped(len(blob.data) - 1))

    async def test_blob_cut_after_a_middle_chunk_refused(self) -> None:
        """Every chunk left is signed, but none as the last: the end is missing."""
        blob = signed_blob()
        await self.refused_then_the_real_one_taken(blob, blob.data[: blob.chunk(3)])

    async def test_altered_format_2_blob_refused(self) -> None:
        blob = v2_blob()
        await self.refused_then_the_real_one_taken(blob, blob.flipped(blob.header_size + 50))

    async def test_a_forged_chunk_is_refused_as_soon_as_it_arrives(self) -> None:
        """Not at the end of the transfer: before the rest of the blob is sent."""
        holder, _, session = await self.pair()
        blob = signed_blob(chunks=8.5)
        altered = blob.flipped(blob.chunk(0) + 7)
        stream = session.store(wire.Store(blob.key.owner, blob.key.blob, len(altered), 1))
        assert isinstance(stream, OutgoingStream)
        self.addCleanup(stream.abort, "test over")
        stream.write(altered[: blob.chunk(1) + 1000])  # chunk 0, its signature, a little more
        # The holder reads its connection in order: by the time it answers this
        # PING it has checked chunk 0, and its refusal came before the answer.
        await session.request(wire.Ping())
        self.assertTrue(stream.reply.called, "the forged chunk was not refused on arrival")
        with self.assertRaises(RemoteError) as caught:
            await stream.reply
        self.assertEqual(caught.exception.code, "bad_blob")
        self.assertLess(stream.sent, len(altered))
        await self.assert_nothing_kept(holder, blob)


@dataclass(frozen=True)
class RecordingAdmission(Admission):
    """A node's real admission rules, noting each proof shown to it and its verdict."""

    shown: list[tuple[str, str | None, str | None]] = field(
        default_factory=list, compare=False, hash=False
    )

    def refuse_proof(self, binding: bytes | None, node_id: str, proof: str | None) -> str | None:
        verdict = super().refuse_proof(binding, node_id, proof)
        self.shown.append((node_id, proof, verdict))
        return verdict


@dataclass(frozen=True)
class ReplayingAdmission(Admission):
    """No network key: only a proof captured from another connection, shown again."""

    captured: str = ""

    def proof(self, binding: bytes | None, node_id: str) -> str | None:
        return self.captured


class ProofReplayTests(NodeTestCase):
    """The network-key proof is bound to its TLS session: captured, it opens no other."""

    def keyed_node(self, port: int, peers: list[int], org: str, rules: Admission) -> NodeService:
        return start_node(self, port, peers, org, admission=rules)

    async def test_a_captured_proof_replayed_on_another_connection_is_refused(self) -> None:
        key = NetworkKey.generate()
        hub_port = free_port()
        rules = RecordingAdmission(network_key=key)
        hub = self.keyed_node(hub_port, [], "hub", rules)
        member = self.keyed_node(free_port(), [hub_port], "member", Admission(network_key=key))
        await self.connected(hub, member)
        [(node_id, proof, verdict)] = rules.shown
        self.assertEqual((node_id, verdict), (member.node_id, None))
        assert proof is not None

        # A second connection with the member's own certificate (so the proof's
        # node id is right), showing the captured proof instead of the key's.
        factory = member.factory.dialling(f"127.0.0.1:{hub_port}")
        factory.admission = ReplayingAdmission(captured=proof)
        factory.registry = None  # not one of the member's sessions
        endpoint = TLSClientEndpoint(member.tls, TCP4ClientEndpoint(reactor, "127.0.0.1", hub_port))
        replay = await endpoint.connect(factory)
        assert isinstance(replay, PeerProtocol)
        self.addCleanup(replay.close, "test over")
        with self.assertRaises(SessionClosed):
            await replay.ready
        self.assertEqual(rules.shown[1:], [(member.node_id, proof, "wrong network key")])
        # The member's real session was never disturbed.
        self.assertIn(self.session(hub, member), hub.registry.live())


def mount_tmpfs(test: NodeTestCase, size: str) -> Path:
    """A new tmpfs of ``size`` (as root), unmounted when the test ends."""
    where = Path(test.mktemp()).resolve()
    where.mkdir(parents=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError as e:
        cannot_run(f"cannot run mount: {e}")
    if mounted.returncode != 0:
        cannot_run(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    # Registered before any node starts on it, so it runs after they all stopped.
    test.addCleanup(subprocess.run, ["umount", str(where)], check=True, timeout=30)
    return where


class ReserveOnARealDiskTests(NodeTestCase):
    """The free-disk reserve, on a real 8 MiB filesystem rather than a made-up free()."""

    RESERVE = 4 << 20

    async def test_a_replica_that_would_cross_the_reserve_is_refused(self) -> None:
        disk = mount_tmpfs(self, "8m")
        h_port = free_port()
        holder = self.make_node(
            h_port, org="holder", data_dir=disk / "holder", space=SpaceLimits(reserve=self.RESERVE)
        )
        owner = self.make_node(peers=[h_port], org="owner")
        await self.connected(holder, owner)
        free = shutil.disk_usage(disk).free
        too_big = free - self.RESERVE + (1 << 20)  # fits the disk, not the reserve
        self.assertLess(too_big, free)

        upload = owner.files.begin_put("too big", too_big, None)
        upload.write(os.urandom(too_big))
        result = await upload.finish()
        [outcome] = result.peers
        self.assertEqual((outcome.node_id, outcome.ok), (holder.node_id, False))
        assert outcome.error is not None
        self.assertIn("disk_full: not enough free disk for this replica", outcome.error)
        # Nothing of it on the holder: no blob, no temp file, no entry, no space used.
        key = BlobKey(owner.node_id, result.blob)
        await eventually(lambda: not any((holder.store.root / "tmp").iterdir()), "no temp file")
        self.assertFalse(holder.store.exists(key))
        self.assertIsNone(holder.files.holdings.catalog.get(key))
        self.assertGreaterEqual(shutil.disk_usage(disk).free, free - (256 << 10))

        # Below the reserve a replica is taken: the refusal was the reserve's.
        upload = owner.files.begin_put("small", 1 << 20, None)
        upload.write(os.urandom(1 << 20))
        result = await upload.finish()
        self.assertEqual(result.replicas, 2)
        self.assertTrue(holder.store.exists(BlobKey(owner.node_id, result.blob)))


def rss() -> int:
    """Resident memory of this process, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class UploadingClient(threading.Thread):
    """An HTTP client on its own thread, PUTting ``size`` bytes as fast as the node
    reads them: a blocking socket, so the node's reading paces it."""

    def __init__(self, url: str, token: str, name: str, size: int) -> None:
        super().__init__(daemon=True)
        host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        self._address = (host, int(port))
        self._head = (
            f"PUT /v1/files/{name} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        self.size = size
        self.sent = 0
        self.answer = b""
        self.error: BaseException | None = None
        self._socket: socket.socket | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(self._address, timeout=60) as s:
                self._socket = s
                s.sendall(self._head)
                piece = os.urandom(1 << 20)
                while self.sent < self.size:
                    n = min(len(piece), self.size - self.sent)
                    s.sendall(piece[:n])
                    self.sent += n
                while data := s.recv(65536):
                    self.answer += data
        except BaseException as e:
            self.error = e

    def hang_up(self) -> None:
        """Unblock the thread whatever it waits for (cleanup)."""
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.join(30)


class SlowHolderTests(NodeTestCase):
    """A holder that stops reading slows the owner's upload; the owner's memory does
    not fill with what the holder has not taken."""

    SIZE = 192 << 20
    BOUND = 48 << 20  # what may sit between the owner and the holder: buffers, kernel

    async def test_a_stalled_holder_pauses_the_upload_and_bounds_memory(self) -> None:
        o_port = free_port()
        owner = self.make_node(o_port, org="owner")
        holder = self.make_node(peers=[o_port], org="holder")
        await self.connected(owner, holder)
        url = await owner.ready
        to_holder, from_owner = self.session(owner, holder), self.session(holder, owner)
        # The holder stops reading its connection to the owner (a slow disk, a
        # stalled process): the owner's writes to it pile up, unless paused.
        from_owner.hold_reading(self)
        self.addCleanup(from_owner.release_reading, self)

        baseline = rss()
        client = UploadingClient(url, owner.token, "big.bin", self.SIZE)
        client.start()
        self.addCleanup(client.hang_up)
        peak = baseline
        last, since = -1, time.monotonic()
        # Until the client is stuck (sent nothing for a second) or sent it all.
        while client.sent < self.SIZE and client.error is None:
            peak = max(peak, rss())
            if client.sent != last:
                last, since = client.sent, time.monotonic()
            elif time.monotonic() - since > 1.0:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertIsNone(client.error)
        in_flight = to_holder.bytes_out - from_owner.bytes_in
        self.assertLess(in_flight, self.BOUND, "the owner sent on, regardless of the holder")
        self.assertLess(client.sent, self.SIZE - self.BOUND, "the upload went on regardless")
        self.assertLess(peak - baseline, 2 * self.BOUND, "the owner's memory grew with the file")
        # The path that did it: the transport paused the link's producer.
        self.assertTrue(to_holder.paused, "the owner's link to the holder never paused")

        # The holder reads again: the upload goes on, and completes on both nodes.
        stuck_at = client.sent
        from_owner.release_reading(self)
        await eventually(lambda: client.sent > stuck_at, "the upload to go on")
        await eventually(lambda: not client.is_alive(), "the upload to end", patience=120)
        self.assertIsNone(client.error)
        head, _, body = client.answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 201"), client.answer[:200])
        answer = json.loads(body)
        self.assertEqual((answer["size"], answer["replicas"]), (self.SIZE, 2))
        key = BlobKey(owner.node_id, answer["blob"])
        self.assertEqual(holder.store.size(key), owner.store.size(key))
