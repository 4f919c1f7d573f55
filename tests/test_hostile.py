"""The attacker's view: hostile peers and HTTP clients against real node processes.

Each class starts a small network of real `twistd -n dfs` processes (stopped by
PID): V, the victim, which only accepts, and H, an honest node that dials V. The
attacker runs in this test process with its own node identity, over plain blocking
sockets (pyOpenSSL for TLS). Every attack checks the three promises of the
contract: the bad connection is closed with a reason in V's log, V keeps serving
H (a `dfs put` from H lands on V, and a `dfs get` on H that lost its local copy is
served by V), and V's directory is unchanged except for complete blobs (no new
file, nothing left in store/tmp, nothing created beside the store).

Waits are bounded polls (log lines, store/tmp draining) or socket timeouts,
never sleeps used for synchronisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import select
import shutil
import socket
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.crypto import Encryptor, OrgKey, Tombstone
from dfs_twisted.identity import NodeIdentity, _self_signed, ensure_private_dir, node_id_of
from dfs_twisted.launcher import NodeProcess, free_port, start_network
from dfs_twisted.wire import MessageType

from .shared import SharedFixture, wait_until

pytestmark = pytest.mark.processes

IO_TIMEOUT = 10.0  # bound on any one socket operation of the attacker
HOSTILE_ORG = "mallory"
ZERO_ID = "0" * 64


class ConnectionClosed(Exception):
    """The node closed the attacker's connection."""


# ----------------------------------------------------------------------------- helpers


def tree(root: Path) -> dict[str, str]:
    """Every file (with a hash of its bytes) and directory below ``root``.

    A database stands for its rows: SQLite rewrites its pages and its write-ahead
    log whenever it likes, so bytes say nothing of what it holds.
    """
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name.endswith((".sqlite-wal", ".sqlite-shm")):
            continue
        if path.suffix == ".sqlite":
            result[rel] = hashlib.sha256(repr(rows(path)).encode()).hexdigest()
        elif path.is_file():
            result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[rel] = "directory"
    return result


def rows(database: Path) -> list[tuple[object, ...]]:
    """Every row of every table of a node's database (the state rows apart)."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    with contextlib.closing(db):
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [
            (table, *row)
            for table in sorted(tables)
            if table != "state"
            for row in db.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
        ]


def temp_files(node: NodeProcess) -> list[str]:
    tmp = node.data_dir / "store" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def closed_by_peer(link: PlainLink | TLSLink) -> bool:
    """Whether the other end closed ``link`` (without waiting)."""
    if isinstance(link, PlainLink) and link.reset_at_connect:
        return True
    sock = link.sock
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def log_line(node: NodeProcess, *needles: str) -> str | None:
    try:
        text = node.log_path.read_text(errors="replace")
    except OSError:
        return None
    return next((line for line in text.splitlines() if all(n in line for n in needles)), None)


def wait_for_log(node: NodeProcess, *needles: str) -> str:
    """The first line of the node's log containing every one of ``needles``."""
    wait_until(lambda: log_line(node, *needles) is not None, f"{needles!r} in {node.log_path}")
    line = log_line(node, *needles)
    assert line is not None
    return line


def tls_context(identity: NodeIdentity | None) -> SSL.Context:
    """TLS 1.3 like a node's, with ``identity``'s certificate (or none); trusts anything."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    if identity is not None:
        ctx.use_certificate(identity.certificate)
        ctx.use_privatekey(identity.key)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    return ctx


def frame(mtype: int, request_id: int, body: bytes, flags: int = 0) -> bytes:
    """A frame built by hand: nothing checks what it says."""
    return wire.HEADER.pack(mtype, flags, request_id, len(body)) + body


def json_frame(mtype: int, request_id: int, fields: dict[str, Any]) -> bytes:
    return frame(mtype, request_id, json.dumps(fields).encode())


def data_frame(request_id: int, payload: bytes, *, end: bool = False) -> bytes:
    return wire.data_header(request_id, len(payload), end=end, reply=False) + payload


class PlainLink:
    """A raw TCP connection to a port."""

    def __init__(self, port: int) -> None:
        self.sock = connected_socket(port)
        self.local_port: int = self.sock.getsockname()[1]
        # A node over its connection limit may reset a connection before connect() returns.
        self.reset_at_connect = False
        try:
            self.sock.connect(("127.0.0.1", port))
        except ConnectionResetError:
            self.reset_at_connect = True

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:  # reset or broken pipe: the node already hung up
            raise ConnectionClosed(str(e)) from e

    def wait_closed(self) -> bytes:
        """Read until the node closes the connection; return what it sent first."""
        if self.reset_at_connect:
            return b""
        received = bytearray()
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"connection still open after {IO_TIMEOUT:.0f}s") from None
            except ConnectionResetError:
                return bytes(received)
            if not data:
                return bytes(received)
            received += data

    def close(self) -> None:
        self.sock.close()


def connected_socket(port: int) -> socket.socket:
    """A TCP socket bound to a known local port (the node logs it), not yet connected."""
    sock = socket.socket()
    sock.settimeout(IO_TIMEOUT)
    sock.bind(("127.0.0.1", 0))
    return sock


class TLSLink:
    """A TLS connection to a node's peer port, as the attacker's own node or without a cert.

    The socket blocks, bounded by SO_RCVTIMEO/SO_SNDTIMEO: OpenSSL then reports a
    timeout as WantRead/WantWrite, which is treated as a failure of the test.
    """

    def __init__(self, port: int, identity: NodeIdentity | None) -> None:
        self.sock = connected_socket(port)
        try:
            self.sock.connect(("127.0.0.1", port))
        except ConnectionResetError as e:
            self.sock.close()
            raise ConnectionClosed(str(e)) from e
        self.sock.settimeout(None)
        timeval = struct.pack("ll", int(IO_TIMEOUT), 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self.local_port: int = self.sock.getsockname()[1]
        self.identity = identity
        self.conn = SSL.Connection(tls_context(identity), self.sock)
        self.conn.set_connect_state()

    def handshake(self) -> None:
        try:
            self.conn.do_handshake()
        except (SSL.WantReadError, SSL.WantWriteError):
            raise AssertionError("TLS handshake timed out") from None
        except (SSL.Error, OSError) as e:
            raise ConnectionClosed(str(e)) from e

    def send(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except (SSL.WantReadError, SSL.WantWriteError):
            raise AssertionError(f"node took no data for {IO_TIMEOUT:.0f}s") from None
        except (SSL.Error, OSError) as e:
            raise ConnectionClosed(str(e)) from e

    def recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            try:
                data += self.conn.recv(n - len(data))
            except SSL.WantReadError:
                raise AssertionError(f"no answer within {IO_TIMEOUT:.0f}s") from None
            except (SSL.Error, OSError) as e:
                raise ConnectionClosed(str(e)) from e
        return bytes(data)

    def read_frame(self) -> wire.Frame:
        mtype, flags, request_id, length = wire.HEADER.unpack(self.recv_exact(wire.HEADER.size))
        return wire.Frame(mtype, flags, request_id, self.recv_exact(length))

    def read_message(self) -> tuple[wire.Frame, wire.Message]:
        """The next answer to us (or HELLO), skipping the node's own requests to us.

        Once admitted, a node asks a new peer what it holds (to send it what it
        missed); the attacker never answers, which costs the node nothing.
        """
        while True:
            f = self.read_frame()
            if f.flags & wire.FLAG_REPLY or f.request_id == 0:
                return f, wire.decode(f)

    def hello(self, *, version: int = wire.PROTOCOL_VERSION, node_id: str | None = None) -> None:
        assert self.identity is not None
        message = wire.Hello(
            version=version,
            node_id=node_id or self.identity.node_id,
            org=HOSTILE_ORG,
            listen="127.0.0.1:1",
            proof=None,
        )
        self.send(wire.encode(message, 0))

    def wait_closed(self) -> bytes:
        """Read until the node closes the connection; return the plaintext it sent first."""
        received = bytearray()
        while True:
            try:
                data = self.conn.recv(65536)
            except SSL.WantReadError:
                raise AssertionError(f"connection still open after {IO_TIMEOUT:.0f}s") from None
            except (SSL.Error, OSError):  # close_notify, alert, reset or EOF
                return bytes(received)
            if not data:
                return bytes(received)
            received += data

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------- network


class VictimNetwork:
    """V (the victim, only accepts) and H (honest, dials V), plus the attacker's keys."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dfs-hostile-"))
        try:
            victim_port = free_port()
            self.victim, self.honest = start_network(
                self.root, [(victim_port, []), (free_port(), [victim_port])]
            )
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.victim_id: str = self.victim.status()["node_id"]
        self.honest_id: str = self.honest.status()["node_id"]
        private = self.root / "attacker" / "private"
        ensure_private_dir(private)
        self.attacker = NodeIdentity.load_or_create(private)
        # The attacker's own org key: it can make real blobs for its own namespace.
        self.attacker_key = OrgKey.generate()

    def stop(self) -> None:
        self.victim.stop()
        self.honest.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class HostileTestCase(SharedFixture, SynchronousTestCase):
    """Tests of one class share one victim network, started by the first of them."""

    @classmethod
    def make_shared(cls) -> VictimNetwork:
        return VictimNetwork()

    def setUp(self) -> None:
        self.net: VictimNetwork = self.shared()
        self.addCleanup(self._shared_done)
        self.rounds = 0
        self.baseline()

    # -- the victim's disk

    def baseline(self) -> None:
        """Remember V's directory (and what lies beside it) as it is now."""
        wait_until(lambda: not temp_files(self.net.victim), "V's store/tmp to be empty")
        self.before = tree(self.net.victim.data_dir)
        self.beside = sorted(p.name for p in self.net.root.iterdir())

    def assert_untouched(self) -> None:
        """No temp file left, no file or directory added, changed or removed on V."""
        victim = self.net.victim
        wait_until(lambda: not temp_files(victim), "V's store/tmp to be emptied")
        self.assertEqual(tree(victim.data_dir), self.before)
        self.assertEqual(sorted(p.name for p in self.net.root.iterdir()), self.beside)

    # -- the attacker

    def connect(self, identity: NodeIdentity | None = None) -> TLSLink:
        """TLS to V as the attacker's node (handshake done, no HELLO yet)."""
        link = TLSLink(self.net.victim.port, identity or self.net.attacker)
        self.addCleanup(link.close)
        link.handshake()
        return link

    def admitted(self) -> TLSLink:
        """A connection V admitted: TLS, the attacker's HELLO, and V's HELLO back."""
        link = self.connect()
        link.hello()
        f, message = link.read_message()
        assert isinstance(message, wire.Hello), message
        self.assertEqual(message.node_id, self.net.victim_id)
        self.assertEqual(f.request_id, 0)
        return link

    def plain(self) -> PlainLink:
        link = PlainLink(self.net.victim.port)
        self.addCleanup(link.close)
        return link

    def assert_closed_for(self, link: TLSLink | PlainLink, reason: str) -> str:
        """V cut ``link`` and logged ``reason`` for that very connection."""
        link.wait_closed()
        # With the reason too: an earlier connection may have had the same local port.
        line = wait_for_log(self.net.victim, f"at 127.0.0.1:{link.local_port}: ", reason)
        self.assertIn("closing peer connection", line)
        return line

    def attacker_blob(self, size: int, name: str = "mallory.bin") -> tuple[str, bytes]:
        """A real blob of the attacker's own org: (blob id, ciphertext)."""
        # A fresh version each time: the holder already has the ones stored before.
        self.version = time.time_ns()
        enc = Encryptor(self.net.attacker_key, self.net.attacker.key, name, self.version)
        plain = os.urandom(size)
        chunks = [enc.header, *enc.update(plain), enc.finalize()]
        return enc.blob, b"".join(chunks)

    # -- the honest nodes

    def assert_still_serving(self) -> None:
        """H puts a file (V stores it) and, its local copy gone, gets it back from V."""
        net = self.net
        self.rounds += 1
        name = f"honest-{self._testMethodName}-{self.rounds}.bin"
        data = os.urandom(40_000)
        owned = net.honest.data_dir / "store" / net.honest_id
        before = set(owned.rglob("*"))
        out = net.honest.dfs("put", "-", "--name", name, input=data).stdout.decode()
        self.assertIn("here and on 1 of 1 connected peers", out)
        [blob] = [p for p in set(owned.rglob("*")) - before if p.is_file()]
        replica = net.victim.data_dir / blob.relative_to(net.honest.data_dir)
        self.assertEqual(replica.read_bytes(), blob.read_bytes())
        blob.unlink()
        got = net.honest.dfs("get", name)
        self.assertEqual(got.stdout, data)
        self.assertIn(f"from peer node-{net.victim.port}", got.stderr.decode())
        # The get restores H's copy once the stream verified: wait, or the next round
        # would count it as a new file.
        wait_until(blob.exists, "H to restore its copy")
        self.assert_honest_connected()

    def assert_honest_connected(self) -> None:
        peers = self.net.victim.status()["peers"]
        states = {p["node_id"]: p["state"] for p in peers}
        self.assertEqual(states.get(self.net.honest_id), "connected", peers)


# ------------------------------------------------------------------- before the HELLO


class HandshakeAttackTests(HostileTestCase):
    def test_garbage_bytes_are_refused(self) -> None:
        link = self.plain()
        try:
            link.send(os.urandom(4096))
        except ConnectionClosed:
            pass
        link.wait_closed()
        self.assert_untouched()
        self.assert_still_serving()

    def test_http_request_to_the_peer_port_is_refused(self) -> None:
        link = self.plain()
        link.send(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = link.wait_closed()
        self.assertNotIn(b"HTTP/", answer)
        self.assertNotIn(self.net.victim_id.encode(), answer)
        self.assert_untouched()
        self.assert_still_serving()

    def test_tls_client_without_certificate_is_refused(self) -> None:
        link = TLSLink(self.net.victim.port, None)
        self.addCleanup(link.close)
        try:
            # TLS 1.3: the client may finish before the server checked its certificate.
            link.handshake()
            link.send(b"\x00" * 64)
        except ConnectionClosed:
            pass
        answer = link.wait_closed()
        self.assertEqual(answer, b"", "the node sent plaintext to a client without a cert")
        self.assert_untouched()
        self.assert_still_serving()

    def test_failed_handshakes_are_logged(self) -> None:
        garbage = self.plain()
        try:
            garbage.send(os.urandom(4096))
        except ConnectionClosed:
            pass
        http_client = self.plain()
        http_client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        no_cert = TLSLink(self.net.victim.port, None)
        self.addCleanup(no_cert.close)
        try:
            no_cert.handshake()
        except ConnectionClosed:
            pass
        # Each with its address and the reason it failed, as TLS saw it.
        for link, reason in (
            (garbage, "wrong version number"),
            (http_client, "http request"),
            (no_cert, "peer did not return a certificate"),
        ):
            link.wait_closed()
            line = wait_for_log(self.net.victim, f"127.0.0.1:{link.local_port}")
            self.assertIn(
                f"connection from 127.0.0.1:{link.local_port} ended before its handshake "
                "completed: ",
                line,
            )
            self.assertIn(reason, line)

    def test_many_idle_connections_do_not_starve_peers(self) -> None:
        victim = self.net.victim
        # Half-open after TLS (handshake done, HELLO never sent), then raw TCP.
        idle: list[TLSLink | PlainLink] = [self.connect() for _ in range(20)]
        idle += [self.plain() for _ in range(200)]
        self.assert_still_serving()
        # And V's own put reaches H while the idle connections are still open.
        data = os.urandom(30_000)
        out = victim.dfs("put", "-", "--name", "from-victim.bin", input=data).stdout.decode()
        self.assertIn("here and on 1 of 1 connected peers", out)
        self.assertEqual(victim.dfs("get", "from-victim.bin").stdout, data)
        # Whatever the node cut (over its limit of connections awaiting a handshake),
        # it said why.
        cut = [link for link in idle if closed_by_peer(link)]
        for link in cut:
            wait_for_log(victim, f":{link.local_port}: ", "closing peer connection")
        for link in idle:
            link.close()
        # Once they are gone, newcomers are let in again: nothing leaked.
        wait_until(self.can_join, "a new peer to be admitted after the flood")

    def test_new_peer_admitted_during_idle_flood(self) -> None:
        idle = [self.plain() for _ in range(200)]
        self.assertTrue(self.can_join(), "a new peer was refused during the flood")
        for link in idle:
            link.close()

    def can_join(self) -> bool:
        """Whether a new node can connect to V now (TLS and HELLO)."""
        try:
            link = self.admitted()
        except ConnectionClosed:
            return False
        link.close()
        return True


class SessionFloodTests(HostileTestCase):
    """Admitted sessions are bounded: one accepted per node id, 128 in all."""

    def test_a_node_reconnecting_replaces_its_older_session(self) -> None:
        links = [self.admitted() for _ in range(30)]
        for link in links[:-1]:
            self.assert_closed_for(link, "replaced by a newer connection from the same node")
        # The newest is served.
        links[-1].send(wire.encode(wire.Digest(self.net.victim_id), 9))
        f, reply = links[-1].read_message()
        self.assertEqual((f.request_id, type(reply)), (9, wire.DigestReply))
        self.assert_untouched()
        self.assert_still_serving()

    def test_made_up_ids_are_capped_and_cheap(self) -> None:
        rss_before = resident(self.net.victim)
        links = []
        for _ in range(127):  # H holds one session: 128 in all
            link = TLSLink(self.net.victim.port, made_up_identity())
            self.addCleanup(link.close)
            link.handshake()
            link.hello()
            self.assertIsInstance(link.read_message()[1], wire.Hello)
            links.append(link)
        grown = resident(self.net.victim) - rss_before
        # Transfer buffers are lent only while a call runs: sessions cost kilobytes.
        self.assertLess(grown, 64 << 20, f"128 idle sessions took {grown >> 20} MiB")
        one_more = TLSLink(self.net.victim.port, made_up_identity())
        self.addCleanup(one_more.close)
        one_more.handshake()
        one_more.hello()
        _, refusal = one_more.read_message()
        assert isinstance(refusal, wire.Error), refusal
        self.assertIn("too many peers connected", refusal.message)
        self.assert_honest_connected()
        for link in links:
            link.close()
        wait_until(lambda: len(self.net.victim.status()["peers"]) == 1, "V to drop them")
        self.assert_still_serving()


class RequestFloodTests(HostileTestCase):
    """An admitted peer asking for answers faster than it reads them."""

    def test_requests_sent_without_reading_the_answers_cost_bounded_memory(self) -> None:
        # The costliest answer there is: a DIGEST with the children of a namespace of
        # hundreds of blobs, about 18 kB for 100 bytes asked. Before, 30,000 of them
        # sent without reading a reply grew V by 516 MiB, and an honest put and get
        # took 27 s while V worked through them.
        link = self.admitted()
        mine = self.net.attacker.node_id
        stores = []
        for i in range(700):
            blob, ciphertext = self.attacker_blob(100, name=f"flood-{i}")
            stores.append(
                wire.encode(wire.Store(mine, blob, len(ciphertext), self.version), 10 + i)
                + data_frame(10 + i, ciphertext, end=True)
            )
        link.send(b"".join(stores))
        for _ in stores:
            self.assertIsInstance(link.read_message()[1], wire.Ack)
        link.send(wire.encode(wire.Digest(mine, "", True), 1))
        _, digest = link.read_message()
        assert isinstance(digest, wire.DigestReply)
        self.assertGreater(len(digest.children), 200)
        before = resident(self.net.victim)
        asks = b"".join(wire.encode(wire.Digest(mine, "", True), i) for i in range(2, 1002))
        flood = threading.Thread(target=_send_all, args=(link, [asks] * 30), daemon=True)
        flood.start()
        wait_for_log(self.net.victim, "asks faster than it reads the answers", mine)
        self.assert_still_serving()
        grown = resident(self.net.victim) - before
        self.assertLess(grown, 64 << 20, f"V grew by {grown >> 20} MiB")
        link.close()
        flood.join(IO_TIMEOUT + 5)
        self.assertFalse(flood.is_alive())


def _send_all(link: TLSLink, pieces: list[bytes]) -> None:
    """Send until done or the link fails (V stopped reading: the send times out)."""
    with contextlib.suppress(ConnectionClosed, AssertionError):
        for piece in pieces:
            link.send(piece)


def made_up_identity() -> NodeIdentity:
    """A node identity that exists only in memory: what a new id costs an attacker."""
    key = Ed25519PrivateKey.generate()
    cert = _self_signed(key)
    return NodeIdentity(key, cert, node_id_of(cert), X25519PrivateKey.generate())


def resident(node: NodeProcess) -> int:
    """The node process's resident memory now, in bytes."""
    for line in Path(f"/proc/{node.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ------------------------------------------------------------------- framing and state


class FrameAttackTests(HostileTestCase):
    def test_huge_declared_length_closes_at_once(self) -> None:
        for mtype in (MessageType.STORE, MessageType.DATA):
            link = self.admitted()
            link.send(wire.HEADER.pack(mtype, 0, 1, 2**32 - 1))
            # No body follows: the node must not wait for it.
            self.assert_closed_for(link, f"{mtype.name} frame body of 4294967295 bytes exceeds")
        self.assert_untouched()
        self.assert_still_serving()

    def test_data_for_unknown_request(self) -> None:
        link = self.admitted()
        link.send(data_frame(77, b"x" * 1000, end=True))
        self.assert_closed_for(link, "DATA for unknown request 77")
        self.assert_untouched()
        self.assert_still_serving()

    def test_request_before_hello(self) -> None:
        link = self.connect()
        link.send(wire.encode(wire.Fetch(self.net.honest_id, ZERO_ID), 1))
        self.assertEqual(link.wait_closed(), b"", "the node answered before HELLO")
        self.assert_closed_for(link, "expected HELLO, got Fetch")
        self.assert_untouched()
        self.assert_still_serving()

    def test_second_hello(self) -> None:
        link = self.admitted()
        link.hello()
        self.assert_closed_for(link, "second HELLO")
        self.assert_untouched()
        self.assert_still_serving()

    def test_unsupported_version_is_answered_then_closed(self) -> None:
        link = self.connect()
        link.hello(version=999)
        # The first and only frame is the refusal: the node does not say HELLO first.
        f, message = link.read_message()
        assert isinstance(message, wire.Error), message
        self.assertEqual((f.request_id, f.flags), (0, wire.FLAG_REPLY))
        self.assertIn("version 999", message.message)
        self.assertEqual(link.wait_closed(), b"")
        self.assert_closed_for(link, "protocol version 999 not supported")
        self.assert_untouched()
        self.assert_still_serving()

    def test_path_traversal_ids_are_refused(self) -> None:
        attacks: list[tuple[MessageType, dict[str, Any], str]] = [
            (MessageType.FETCH, {"owner": "../../etc", "blob": ZERO_ID}, "FETCH.owner"),
            (
                MessageType.STORE,
                {"owner": "../../etc", "blob": "passwd", "size": 10, "version": 1},
                "STORE.owner",
            ),
            (
                MessageType.STORE,
                {
                    "owner": self.net.attacker.node_id,
                    "blob": "../../../../pwned",
                    "size": 10,
                    "version": 1,
                },
                "STORE.blob",
            ),
            (
                MessageType.DELETE,
                {
                    "owner": "..",
                    "blob": ZERO_ID,
                    "version": 1,
                    "key": ZERO_ID,
                    "signature": "00" * 64,
                },
                "DELETE.owner",
            ),
            (MessageType.LIST, {"owner": "../..", "after": None, "limit": 10}, "LIST.owner"),
            (MessageType.FETCH, {"owner": ZERO_ID + "\n", "blob": ZERO_ID}, "FETCH.owner"),
            (MessageType.FETCH, {"owner": "AB" * 32, "blob": ZERO_ID}, "FETCH.owner"),
        ]
        for mtype, fields, field in attacks:
            link = self.admitted()
            link.send(json_frame(mtype, 1, fields))
            if mtype == MessageType.STORE:
                try:
                    link.send(data_frame(1, b"root::0:0::/root:/bin/sh\n", end=True))
                except ConnectionClosed:
                    pass
            self.assert_closed_for(link, f"{field}: not a 64-char lowercase hex id")
        self.assert_untouched()
        self.assertFalse((self.net.root / "etc").exists())
        self.assert_still_serving()

    def test_malformed_frames_each_close_their_connection(self) -> None:
        hello = wire.encode(
            wire.Hello(wire.PROTOCOL_VERSION, ZERO_ID, "x", "127.0.0.1:1", proof=None), 0
        )
        attacks = [
            (frame(200, 1, b"{}"), "unknown frame type 200"),
            (frame(MessageType.LIST, 1, b"{}", flags=0x80), "unknown flag bits 0x80"),
            (frame(MessageType.FETCH, 1, b"", flags=wire.FLAG_END), "FLAG_END on non-DATA"),
            (frame(MessageType.FETCH, 1, b"\xff\xfe{"), "not valid UTF-8 JSON"),
            (frame(MessageType.FETCH, 1, b"[1, 2]"), "not a JSON object"),
            (frame(MessageType.FETCH, 1, b"[" * 50_000), "FETCH body"),
            (
                frame(MessageType.FETCH, 1, f'{{"owner":"{ZERO_ID}","owner":"x"}}'.encode()),
                "duplicate key",
            ),
            (json_frame(MessageType.FETCH, 1, {"owner": ZERO_ID}), "missing key 'blob'"),
            (
                json_frame(MessageType.LIST, 1, {"owner": ZERO_ID, "after": None, "limit": 10**9}),
                "LIST.limit",
            ),
            (
                json_frame(
                    MessageType.STORE,
                    1,
                    {"owner": ZERO_ID, "blob": ZERO_ID, "size": -1, "version": 1},
                ),
                "STORE.size",
            ),
            (wire.encode(wire.Ack(), 5, reply=True), "reply for unknown request 5"),
            (wire.encode(wire.Ack(), 5), "unexpected Ack request"),
            (wire.encode(wire.FetchReply(10), 6), "unexpected FetchReply request"),
            (hello, "second HELLO"),
        ]
        for data, reason in attacks:
            link = self.admitted()
            link.send(data)
            self.assert_closed_for(link, reason)
        self.assert_untouched()
        self.assert_still_serving()


# ----------------------------------------------------------------- stores and writes


class StoreAttackTests(HostileTestCase):
    def store_header(self, blob: str, size: int | None, request_id: int = 1) -> bytes:
        return wire.encode(
            wire.Store(self.net.attacker.node_id, blob, size, self.version), request_id
        )

    def test_complete_store_in_own_namespace_is_accepted(self) -> None:
        # The control: the attacker's harness can store, so refusals below mean something.
        blob, ciphertext = self.attacker_blob(300_000)
        link = self.admitted()
        link.send(self.store_header(blob, len(ciphertext)))
        for start in range(0, len(ciphertext), 100_000):
            link.send(data_frame(1, ciphertext[start : start + 100_000]))
        link.send(data_frame(1, b"", end=True))
        f, message = link.read_message()
        self.assertEqual((f.request_id, f.flags), (1, wire.FLAG_REPLY))
        self.assertIsInstance(message, wire.Ack)
        rel = f"store/{self.net.attacker.node_id}/{blob[:2]}/{blob[2:4]}/{blob}"
        self.assertEqual((self.net.victim.data_dir / rel).read_bytes(), ciphertext)
        after = tree(self.net.victim.data_dir)
        added = {k for k in after if k not in self.before}
        owner_dir = f"store/{self.net.attacker.node_id}"
        self.assertEqual(
            added,
            {owner_dir, f"{owner_dir}/{blob[:2]}", f"{owner_dir}/{blob[:2]}/{blob[2:4]}", rel},
        )
        # The index gains the blob's row (written after the answer), and nothing else.
        index = "store/index.sqlite"
        row = (self.net.attacker.node_id, blob, self.version - 2**63)
        wait_until(
            lambda: row in [r[1:4] for r in rows(self.net.victim.data_dir / index)],
            "the blob's row in V's index",
        )
        unchanged = {k: v for k, v in after.items() if k not in added and k != index}
        self.assertEqual(unchanged, {k: v for k, v in self.before.items() if k != index})
        link.close()
        self.assert_still_serving()

    def test_store_sending_more_than_announced(self) -> None:
        blob, ciphertext = self.attacker_blob(10_000_000)
        link = self.admitted()
        link.send(self.store_header(blob, 1_000_000))
        try:
            for start in range(0, len(ciphertext), wire.MAX_DATA_BODY):
                link.send(data_frame(1, ciphertext[start : start + wire.MAX_DATA_BODY]))
        except ConnectionClosed:
            pass
        self.assert_closed_for(link, f"STORE of {blob} sent more than announced")
        self.assert_untouched()
        self.assert_still_serving()

    def test_store_with_a_forged_header(self) -> None:
        blob, _ = self.attacker_blob(1000)
        _, other = self.attacker_blob(1000, name="another-file.bin")
        cases = [
            (os.urandom(200_000), "bad blob header"),
            # A real header, but of another blob than the one announced.
            (other, "names a different blob id"),
        ]
        for data, reason in cases:
            link = self.admitted()
            link.send(self.store_header(blob, len(data)))
            link.send(data_frame(1, data, end=True))
            # Refused with a reason; the stream is well framed, so the link stays up.
            f, reply = link.read_message()
            assert isinstance(reply, wire.Error), reply
            self.assertEqual((f.request_id, reply.code), (1, "bad_blob"))
            self.assertIn(reason, reply.message)
            self.assertIn(f"refused a replica of {blob}", wait_for_log(self.net.victim, reason))
            link.close()
        self.assert_untouched()
        self.assert_still_serving()

    def test_store_abandoned_half_way(self) -> None:
        blob, ciphertext = self.attacker_blob(3_000_000)
        link = self.admitted()
        link.send(self.store_header(blob, len(ciphertext)))
        half = len(ciphertext) // 2
        for start in range(0, half, wire.MAX_DATA_BODY):
            link.send(data_frame(1, ciphertext[start : min(half, start + wire.MAX_DATA_BODY)]))
        # The node is writing it: a temp file exists, and nothing else yet.
        wait_until(lambda: len(temp_files(self.net.victim)) == 1, "V to open a temp file")
        link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        link.close()  # a reset, not a clean close
        wait_for_log(self.net.victim, f"dropped partial replica {blob}: connection lost")
        self.assert_untouched()
        self.assert_still_serving()

    def test_writes_into_another_orgs_namespace_are_forbidden(self) -> None:
        net = self.net
        owned = net.honest.data_dir / "store" / net.honest_id
        before = set(owned.rglob("*"))
        data = os.urandom(50_000)
        net.honest.dfs("put", "-", "--name", "victim-of-overwrite.bin", input=data)
        [mine] = [p for p in set(owned.rglob("*")) - before if p.is_file()]
        blob = mine.name
        replica = net.victim.data_dir / mine.relative_to(net.honest.data_dir)
        original = replica.read_bytes()
        self.baseline()

        link = self.admitted()
        # The attacker finds H's blob the way any peer can: by listing V's replicas.
        link.send(wire.encode(wire.List(net.honest_id), 1))
        f, listing = link.read_message()
        self.assertEqual(f.request_id, 1)
        assert isinstance(listing, wire.ListReply), listing
        [entry] = [e for e in listing.entries if e.blob == blob]
        # Overwrite H's blob with a newer version, delete it, then the same in V's
        # own namespace. V takes H's changes from a third node only as H signed them.
        _, ciphertext = self.attacker_blob(10_000)
        newer = entry.version + 1
        forged = Tombstone.sign(net.attacker.key, blob, newer)
        delete = wire.Delete(
            net.honest_id, blob, newer, forged.owner_key.hex(), forged.signature.hex()
        )
        link.send(wire.encode(wire.Store(net.honest_id, blob, len(ciphertext), newer), 2))
        link.send(data_frame(2, ciphertext, end=True))
        link.send(wire.encode(delete, 3))
        link.send(wire.encode(wire.Store(net.victim_id, blob, 10, newer), 4))
        link.send(wire.encode(replace(delete, owner=net.victim_id), 5))
        replies = {}
        for _ in range(4):
            f, message = link.read_message()
            self.assertTrue(f.flags & wire.FLAG_REPLY)
            replies[f.request_id] = message
        expected = {2: "bad_blob", 3: "bad_signature", 4: "forbidden", 5: "forbidden"}
        for request_id, code in expected.items():
            error = replies[request_id]
            assert isinstance(error, wire.Error), error
            self.assertEqual(error.code, code)
        # The refused stream was discarded and the connection still works.
        link.send(wire.encode(wire.List(net.honest_id), 6))
        f, listing = link.read_message()
        self.assertEqual(f.request_id, 6)
        assert isinstance(listing, wire.ListReply), listing
        self.assertIn(entry, listing.entries)

        self.assertEqual(replica.read_bytes(), original)
        line = wait_for_log(net.victim, f"refused a replica of {blob} for {net.honest_id}")
        self.assertIn(HOSTILE_ORG, line)
        line = wait_for_log(net.victim, f"refused a write into {net.victim_id}'s namespace")
        self.assertIn(HOSTILE_ORG, line)
        self.assertIn(net.attacker.node_id, line)
        link.close()
        self.assert_untouched()
        # H, its own copy gone, gets the file back from V's untouched replica.
        mine.unlink()
        got = net.honest.dfs("get", "victim-of-overwrite.bin")
        self.assertEqual(got.stdout, data)
        self.assertIn("from peer", got.stderr.decode())
        self.assert_still_serving()

    def test_hello_claiming_another_node_id(self) -> None:
        link = self.connect()
        link.hello(node_id=self.net.honest_id)
        self.assertEqual(link.wait_closed(), b"")
        self.assert_closed_for(link, "HELLO node id does not match the TLS certificate")
        self.assert_untouched()
        self.assert_still_serving()


# -------------------------------------------------------------------------- HTTP API


class ApiAttackTests(HostileTestCase):
    def api(self) -> tuple[str, int]:
        url = urlsplit(self.net.victim.wait_ready())
        assert url.hostname is not None and url.port is not None
        return url.hostname, url.port

    def token(self) -> str:
        return (self.net.victim.data_dir / "private" / "api_token").read_text().strip()

    def call(
        self,
        method: str,
        path: str,
        headers: dict[str, str | bytes] | None = None,
        body: bytes | Iterator[bytes] | None = None,
    ) -> tuple[int, bytes]:
        host, port = self.api()
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            chunked = body is not None and not isinstance(body, bytes)
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def raw(self, request: bytes) -> bytes:
        """Send raw bytes to the API; return whatever it answers before closing."""
        host, port = self.api()
        with socket.create_connection((host, port), timeout=IO_TIMEOUT) as sock:
            try:
                sock.sendall(request)
            except OSError:  # the node gave up on the request before it was all sent
                pass
            answer = bytearray()
            while True:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
            return bytes(answer)

    def assert_alive(self) -> None:
        self.assertEqual(self.net.victim.status()["node_id"], self.net.victim_id)
        self.assert_honest_connected()

    def test_every_v1_path_needs_the_token(self) -> None:
        secret = "Secret-Merger-Plan.txt"
        data = b"CONFIDENTIAL " * 100
        self.net.victim.dfs("put", "-", "--name", secret, input=data)
        self.baseline()
        requests = [
            ("GET", f"/v1/files/{secret}"),
            ("GET", "/v1/files/no-such-file.txt"),
            ("DELETE", f"/v1/files/{secret}"),
            ("DELETE", "/v1/files/no-such-file.txt"),
            ("PUT", f"/v1/files/{secret}"),
            ("PUT", "/v1/files/new-file.txt"),
            ("GET", "/v1/files"),
            ("GET", "/v1/status"),
            ("POST", "/v1/recover"),
            ("GET", "/v1/no-such-endpoint"),
            ("GET", "/v1/files/..%2F..%2Fprivate%2Fapi_token"),
        ]
        bodies = set()
        for method, path in requests:
            body = b"overwritten" if method == "PUT" else None
            status, answer = self.call(method, path, body=body)
            self.assertEqual(status, 401, f"{method} {path}")
            bodies.add(answer)
        # One answer for all: it does not tell which names exist.
        self.assertEqual(len(bodies), 1, bodies)
        [answer] = bodies
        for needle in (secret.encode(), self.net.victim_id.encode(), b"CONFIDENTIAL"):
            self.assertNotIn(needle, answer)
        self.assert_untouched()
        self.assertEqual(self.net.victim.dfs("get", secret).stdout, data)

    def test_status_page_without_token_shows_no_file_names(self) -> None:
        secret = "Board-Minutes-Private.txt"
        self.net.victim.dfs("put", "-", "--name", secret, input=b"minutes")
        status, page = self.call("GET", "/")
        self.assertEqual(status, 200)
        self.assertNotIn(secret.encode(), page)

    def test_bad_tokens_never_cause_a_server_error(self) -> None:
        token = self.token()
        bad: list[str | bytes] = [
            "",
            "Bearer",
            "Bearer ",
            "Bearer wrong",
            f"bearer {token}",
            f"Bearer {token}x",
            f"Bearer {token[:-1]}",
            f"Bearer  {token}",
            token,
            "Basic dXNlcjpwYXNz",
            b"Bearer \xff\xfe\x00garbage",
            "Bearer " + "A" * 8000,
        ]
        for value in bad:
            for method, path in [("GET", "/v1/status"), ("GET", "/v1/files/x")]:
                status, answer = self.call(method, path, headers={"Authorization": value})
                self.assertIn(status, (400, 401), f"{value!r:.40}: {status} {answer!r:.200}")
                self.assertNotIn(b"Traceback", answer)
                self.assertNotIn(b"internal error", answer)
        self.assertNotIn("Traceback", self.net.victim.log_path.read_text(errors="replace"))
        self.assert_alive()

    def test_header_floods(self) -> None:
        many = b"".join(b"X-Flood-%d: y\r\n" % i for i in range(10_000))
        long_line = b"X-Long: " + b"a" * 100_000 + b"\r\n"
        for headers in (many, long_line):
            answer = self.raw(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
            self.assertTrue(
                answer == b"" or answer.startswith(b"HTTP/1.1 4"), f"answered {answer[:200]!r}"
            )
            self.assert_alive()
        self.assert_untouched()

    def test_oversized_control_body_is_refused(self) -> None:
        headers: dict[str, str | bytes] = {"Authorization": f"Bearer {self.token()}"}
        status, answer = self.call("POST", "/v1/recover", headers=headers, body=b"x" * 10_000_000)
        self.assertEqual(status, 413, answer)
        self.assert_untouched()
        self.assert_alive()
        self.assert_still_serving()

    def test_chunked_control_body_is_bounded(self) -> None:
        headers: dict[str, str | bytes] = {"Authorization": f"Bearer {self.token()}"}
        body = (b"x" * 65536 for _ in range(160))  # 10 MiB, no Content-Length
        try:
            status, answer = self.call("POST", "/v1/recover", headers=headers, body=body)
        except (ConnectionError, http.client.HTTPException):
            status, answer = 0, b""  # cut off while sending: also a refusal
        self.assertIn(status, (0, 413), answer)
        self.assert_untouched()
        self.assert_alive()
