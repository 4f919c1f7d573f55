"""Admission: network keys and allow-lists, as pure rules and between real nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.admission import Admission, AdmissionError, NetworkKey, load_allow_list
from dfs_twisted.launcher import BIN, NodeProcess, free_port

from .inprocess import NodeTestCase

A = "a" * 64
B = "b" * 64


class TempDirCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-admission-"))
        self.addCleanup(shutil.rmtree, self.dir, True)


@pytest.mark.unit
class NetworkKeyTests(TempDirCase):
    def test_create_load_round_trip_and_mode(self) -> None:
        path = self.dir / "net.key"
        key = NetworkKey.generate()
        key.create(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(NetworkKey.load(path), key)
        self.assertNotIn(key.secret.hex(), repr(key))

    def test_create_never_overwrites(self) -> None:
        path = self.dir / "net.key"
        path.write_text("precious")
        self.assertRaises(AdmissionError, NetworkKey.generate().create, path)
        self.assertEqual(path.read_text(), "precious")

    def test_malformed_key_files_refused(self) -> None:
        path = self.dir / "bad.key"
        for text in ["", "dfs-network-key-v1\n", "dfs-network-key-v1\nzz\n", "hello\n" + "0" * 64]:
            path.write_text(text)
            self.assertRaises(AdmissionError, NetworkKey.load, path)
        self.assertRaises(AdmissionError, NetworkKey.load, self.dir / "missing")

    def test_proof_binds_session_node_and_key(self) -> None:
        key, other = NetworkKey.generate(), NetworkKey.generate()
        rules = Admission(network_key=key)
        session, another_session = b"s" * 32, b"t" * 32
        proof = key.proof(session, A)
        self.assertIsNone(rules.refuse_proof(session, A, proof))
        # Replayed on another TLS session, claimed by another node, or made with
        # another key: refused.
        self.assertEqual(rules.refuse_proof(another_session, A, proof), "wrong network key")
        self.assertEqual(rules.refuse_proof(session, B, proof), "wrong network key")
        self.assertEqual(
            rules.refuse_proof(session, A, other.proof(session, A)), "wrong network key"
        )
        self.assertEqual(rules.refuse_proof(session, A, None), "no network key proof")
        self.assertIsNotNone(rules.refuse_proof(None, A, proof))

    def test_open_admission_accepts_everyone(self) -> None:
        rules = Admission()
        self.assertTrue(rules.is_open)
        self.assertIsNone(rules.refuse_certificate(A))
        self.assertIsNone(rules.refuse_proof(b"s" * 32, A, None))
        self.assertIsNone(rules.proof(b"s" * 32, A))


@pytest.mark.unit
class AllowListTests(TempDirCase):
    def test_ids_and_comments(self) -> None:
        path = self.dir / "allow"
        path.write_text(f"# partners\n{A}  # acme\n\n  {B.upper()}\n")
        allowed = load_allow_list(path)
        self.assertEqual(allowed, frozenset({A, B}))
        rules = Admission(allowed=allowed)
        self.assertFalse(rules.is_open)
        self.assertIsNone(rules.refuse_certificate(A))
        self.assertEqual(rules.refuse_certificate("c" * 64), "node id not in the allow list")

    def test_bad_line_names_its_number(self) -> None:
        path = self.dir / "allow"
        path.write_text(f"{A}\n../../etc\n")
        with self.assertRaises(AdmissionError) as caught:
            load_allow_list(path)
        self.assertIn(":2:", str(caught.exception))


@pytest.mark.processes
class NodeAdmissionTests(TempDirCase):
    """Real twistd nodes with and without the federation's network key."""

    def dfs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "dfs"), *args], capture_output=True, text=True, timeout=60)

    def node(self, name: str, peers: list[int], *extra: str) -> NodeProcess:
        node = NodeProcess(free_port(), self.dir / name, peers, extra=extra)
        self.addCleanup(node.stop)
        node.start().wait_ready()
        return node

    def test_network_key_admits_members_only(self) -> None:
        key, other_key = self.dir / "net.key", self.dir / "other.key"
        made = self.dfs("network-key", "create", str(key))
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(self.dfs("network-key", "create", str(other_key)).returncode, 0)
        again = self.dfs("network-key", "create", str(key))
        self.assertNotEqual(again.returncode, 0)
        self.assertTrue(again.stderr.startswith("dfs: "))

        hub = self.node("hub", [], "--network-key", str(key))
        member = self.node("member", [hub.port], "--network-key", str(key))
        stranger = self.node("stranger", [hub.port], "--network-key", str(other_key))
        keyless = self.node("keyless", [hub.port])

        member.wait_peers(1)
        for outsider, why in [(stranger, "wrong network key"), (keyless, "no network key")]:
            peer = self.wait_refused(outsider)
            self.assertIn(why, peer["last_error"])
        # The hub logged who it refused and why.
        log = hub.log_path.read_text()
        self.assertIn("admission refused: wrong network key", log)
        self.assertIn("admission refused: no network key proof", log)
        self.assertNotIn(NetworkKey.load(key).secret.hex(), log)
        hub_peers = [p for p in hub.status()["peers"] if p["state"] == "connected"]
        self.assertEqual([p["node_id"] for p in hub_peers], [member.status()["node_id"]])

    def test_allow_list_refuses_others(self) -> None:
        hub = self.node("hub", [])
        friend = self.node("friend", [hub.port])
        friend.wait_peers(1)
        allow = self.dir / "allow"
        allow.write_text(f"# only the friend\n{friend.status()['node_id']}\n")
        hub.stop()
        hub = NodeProcess(hub.port, hub.data_dir, extra=["--allow", str(allow)])
        self.addCleanup(hub.stop)
        hub.start().wait_ready()
        friend.wait_peers(1)
        other = self.node("other", [hub.port])
        peer = self.wait_refused(other)
        self.assertIn("allow list", peer["last_error"])

    def wait_refused(self, node: NodeProcess) -> dict[str, str]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            [peer] = node.status()["peers"]
            if peer["state"] == "refused":
                return dict(peer)
            time.sleep(0.05)
        raise AssertionError(f"node {node.port} was never refused: {node.status()}")

    def test_listening_beyond_loopback_needs_a_rule(self) -> None:
        # Only the refusal is exercised: the node exits before binding anything.
        result = subprocess.run(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "dfs",
                "--port",
                str(free_port()),
                "--data-dir",
                str(self.dir / "n"),
                "--listen",
                "0.0.0.0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--network-key FILE or --allow FILE", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)


@pytest.mark.inprocess
class SessionBindingTests(NodeTestCase):
    """The proof's binding comes from the real TLS session: the same on its two ends,
    another on every other connection, so a proof captured on one is refused on the next."""

    async def test_a_proof_from_one_connection_is_refused_on_another(self) -> None:
        a_port = free_port()
        a = self.make_node(a_port, org="alpha")
        b = self.make_node(peers=[a_port], org="beta")
        c = self.make_node(peers=[a_port], org="gamma")
        await self.connected(a, b)
        await self.connected(a, c)
        a_b, b_a = self.session(a, b)._binding(), self.session(b, a)._binding()
        a_c = self.session(a, c)._binding()
        assert a_b is not None and a_c is not None
        self.assertEqual(a_b, b_a)
        self.assertEqual(len(a_b), 32)
        self.assertNotEqual(a_b, a_c)

        key = NetworkKey.generate()
        rules = Admission(network_key=key)
        captured = key.proof(a_b, b.node_id)  # what b sent a on their connection
        self.assertIsNone(rules.refuse_proof(a_b, b.node_id, captured))
        self.assertEqual(rules.refuse_proof(a_c, b.node_id, captured), "wrong network key")
