"""Integration tests with real processes: `twistd -n dfs ...` nodes and the `dfs` command.

Every node is started on ephemeral ports in a temporary directory and stopped by its
PID. Classes whose tests do not disturb each other share one 3-node network; trial has
no setUpClass, so the network is started lazily by the first test, stopped after the
last test of the class has run (and, as a fallback, at interpreter exit).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import BIN, NodeFailed, NodeProcess, free_port, start_network

from .environment import cannot_run
from .shared import SeedNetwork, SharedFixture, wait_until

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parent.parent
TAC = REPO / "tac"
HEX64 = re.compile(r"[0-9a-f]{64}")
BLOB_PATH = re.compile(r"([0-9a-f]{64})/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")


def _script(name: str) -> list[str]:
    """A console script of this environment (twistd, dfs), as a user runs it."""
    return [str(BIN / name)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv), env=env, input=input, cwd=cwd, capture_output=True, timeout=120
    )


def dfs(
    *args: str, env: dict[str, str] | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The real `dfs` command, without an implicit --node."""
    return run([*_script("dfs"), *args], env=env, input=input)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DFS_NODE"}
    env.update(extra)
    return env


def payload(size: int, marker: bytes = b"PLAINTEXT-MARKER ") -> bytes:
    """Recognisable plaintext: a marker, then incompressible bytes, repeated."""
    block = marker + os.urandom(4096)
    return (block * (size // len(block) + 1))[:size]


def store_blobs(node: NodeProcess) -> set[str]:
    """Relative paths (``store/...``) of every blob file in a node's store."""
    store = node.data_dir / "store"
    if not store.exists():
        return set()
    return {
        str(p.relative_to(node.data_dir))
        for p in store.rglob("*")
        if p.is_file() and p.relative_to(store).parts[0] not in ("tmp", *INDEX_FILES)
    }


INDEX_FILES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm")  # the catalog, on disk


def files_outside_private(node: NodeProcess) -> Iterable[Path]:
    """Every file of a node that may not hold a secret: DIR minus private/, plus its log."""
    private = node.data_dir / "private"
    for p in node.data_dir.rglob("*"):
        if p.is_file() and private not in p.parents:
            yield p
    if node.log_path.exists():
        yield node.log_path


def api_request(
    node: NodeProcess, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One raw HTTP call to a node's API (for what argv cannot carry)."""
    url = urlsplit((node.data_dir / "api.url").read_text().strip())
    token = (node.data_dir / "private" / "api_token").read_text().strip()
    assert url.hostname is not None and url.port is not None
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def port_busy(port: int) -> bool:
    """Whether a node could not listen on ``port`` (Twisted binds with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class ProcessTestCase(SynchronousTestCase):
    """Helpers shared by the process tests."""

    def tempdir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="dfs-test-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def assert_ok(self, result: subprocess.CompletedProcess[bytes]) -> str:
        self.assertEqual(
            result.returncode, 0, f"failed: {result.args}: {result.stderr.decode(errors='replace')}"
        )
        return result.stdout.decode()

    def assert_clean_failure(self, result: subprocess.CompletedProcess[bytes]) -> str:
        """Exit != 0, exactly one line on stderr starting with 'dfs: ', no traceback."""
        stderr = result.stderr.decode(errors="replace")
        self.assertNotEqual(result.returncode, 0, f"unexpected success: {result.args}")
        self.assertNotIn("Traceback", stderr)
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, f"expected one line on stderr, got {stderr!r}")
        self.assertTrue(lines[0].startswith("dfs: "), lines[0])
        return lines[0]

    def start_node(
        self, port: int, data_dir: Path, peers: Sequence[int | str] = (), org: str | None = None
    ) -> NodeProcess:
        node = NodeProcess(port, data_dir, peers, org=org)
        self.addCleanup(node.stop)
        node.start()
        node.wait_ready()
        return node


class SharedNetworkTestCase(SharedFixture, ProcessTestCase):
    """Tests of one class share a network; each uses its own file names."""

    @classmethod
    def make_shared(cls) -> SeedNetwork:
        return SeedNetwork()

    def setUp(self) -> None:
        self.net: SeedNetwork = self.shared()
        self.addCleanup(self._shared_done)

    def put(self, node: NodeProcess, data: bytes, name: str) -> tuple[str, str]:
        """Store ``data`` as ``name``; return the `dfs put` output and the new blob's path."""
        source = self.tempdir() / "upload"
        source.write_bytes(data)
        before = store_blobs(node)
        out = self.assert_ok(node.dfs("put", str(source), "--name", name))
        new = store_blobs(node) - before
        self.assertEqual(len(new), 1, f"expected one new blob, got {new}")
        return out, new.pop()

    def assert_held_by_all(self, rel: str) -> None:
        for node in self.net.nodes:
            self.assertTrue((node.data_dir / rel).is_file(), f"{rel} missing on {node.port}")


class PluginTests(ProcessTestCase):
    def test_twistd_lists_the_plugin(self) -> None:
        result = run([*_script("twistd"), "--help"], cwd=self.tempdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        commands = [line.split()[0] for line in result.stdout.decode().splitlines() if line.strip()]
        self.assertIn("dfs", commands)

    def test_plugin_help_shows_the_options(self) -> None:
        result = run([*_script("twistd"), "-n", "dfs", "--help"], cwd=self.tempdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout.decode()
        for flag in ("--port", "--peers", "--data-dir", "--listen", "--api", "--org"):
            self.assertIn(flag, out)

    def test_nodes_started_from_one_directory_each_keep_their_own_pidfile(self) -> None:
        # As the README runs them: several `twistd -n dfs` from one directory.
        cwd = self.tempdir()
        first, second = free_port(), free_port()
        procs = []
        for port, data in ((first, "nodes/a"), (second, "nodes/b")):
            argv = [*_script("twistd"), "-n", "dfs", "--port", str(port), "--data-dir", data]
            proc = subprocess.Popen(
                argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            procs.append(proc)
            self.addCleanup(_stop, proc)
        for data in ("nodes/a", "nodes/b"):
            deadline = time.monotonic() + 30
            while not (cwd / data / "api.url").exists():
                self.assertTrue(all(p.poll() is None for p in procs), "a node exited")
                self.assertLess(time.monotonic(), deadline, f"{data} never listened")
                time.sleep(0.05)
            self.assertTrue((cwd / data / "twistd.pid").exists())
        # A second node on the same data dir is refused.
        again = run(
            [*_script("twistd"), "-n", "dfs", "--port", str(free_port()), "--data-dir", "nodes/a"],
            cwd=cwd,
        )
        self.assertNotEqual(again.returncode, 0)

    def test_port_is_required(self) -> None:
        result = run([*_script("twistd"), "-n", "--pidfile=", "dfs"], cwd=self.tempdir())
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--port", (result.stdout + result.stderr).decode())


class SeedStoryTests(ProcessTestCase):
    """The seed's story end to end, including the loss of C's disk."""

    def test_story(self) -> None:
        root = self.tempdir()
        a, b, c = free_port(), free_port(), free_port()
        nodes = start_network(root, [(a, []), (b, [a]), (c, [a, b])])
        for node in nodes:
            self.addCleanup(node.stop)
        node_c = nodes[2]
        node_id = node_c.status()["node_id"]

        name = "Quarterly-Secret-Report-7f3a.txt"
        marker = b"TOP-SECRET-PLAINTEXT "
        data = payload(300_000, marker)
        source = root / name
        source.write_bytes(data)

        before = store_blobs(node_c)
        out = self.assert_ok(node_c.dfs("put", str(source)))
        self.assertIn("2 of 2 connected peers", out)
        new = store_blobs(node_c) - before
        self.assertEqual(len(new), 1)
        rel = new.pop()
        match = BLOB_PATH.fullmatch(rel.removeprefix("store/"))
        assert match is not None, rel
        owner, aa, bb, blob = match.groups()
        self.assertEqual(owner, node_id)
        self.assertEqual((aa, bb), (blob[:2], blob[2:4]))
        for node in nodes:
            self.assertTrue((node.data_dir / rel).is_file(), f"no replica on {node.port}")

        # No plaintext and no file name anywhere outside private/, logs included.
        needles = [marker, data[len(marker) : len(marker) + 64], name.encode()]
        for node in nodes:
            for path in files_outside_private(node):
                content = path.read_bytes()
                for needle in needles:
                    self.assertNotIn(needle, content, f"{needle[:24]!r} found in {path}")

        self.assertEqual(self.assert_ok_bytes(node_c.dfs("get", name)), data)

        # C loses its disk while stopped, then recovers from A and B. With live TLS
        # links to both peers it must shut down on SIGTERM, not wait to be killed.
        node_c.stop()
        assert node_c.process is not None
        self.assertIn(node_c.process.returncode, (0, -signal.SIGTERM))
        shutil.rmtree(node_c.data_dir / "store")
        node_c.start()
        node_c.wait_ready()
        status = node_c.wait_peers(2)
        self.assertEqual(status["node_id"], node_id)
        # Before recovery the file is listed from C's ledger, as held by its 2 peers.
        listing = json.loads(self.assert_ok(node_c.dfs("ls", "--json")))
        self.assertEqual(listing, [{"name": name, "size": len(data), "replicas": 2}])
        recovered = self.assert_ok(node_c.dfs("recover"))
        self.assertIn(name, recovered)
        self.assertTrue((node_c.data_dir / rel).is_file())
        entries = json.loads(self.assert_ok(node_c.dfs("ls", "--json")))
        self.assertIn({"name": name, "size": len(data), "replicas": 3}, entries)
        self.assertEqual(self.assert_ok_bytes(node_c.dfs("get", name)), data)

    def assert_ok_bytes(self, result: subprocess.CompletedProcess[bytes]) -> bytes:
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout


class NetworkTests(SharedNetworkTestCase):
    def test_status_json(self) -> None:
        net = self.net
        status = json.loads(self.assert_ok(net.c.dfs("status", "--json")))
        self.assertRegex(status["node_id"], HEX64)
        self.assertEqual(status["org"], f"node-{net.c.port}")
        peers = {p["node_id"]: p for p in status["peers"]}
        for peer in (net.a, net.b):
            peer_id = peer.status()["node_id"]
            self.assertIn(peer_id, peers)
            row = peers[peer_id]
            self.assertEqual(row["state"], "connected")
            self.assertEqual(row["org"], f"node-{peer.port}")
            self.assertEqual(row["address"], f"127.0.0.1:{peer.port}")

    def test_ls_json(self) -> None:
        data = payload(5000)
        out, _ = self.put(self.net.c, data, "ls-json.bin")
        self.assertIn("2 of 2 connected peers", out)
        entries = json.loads(self.assert_ok(self.net.c.dfs("ls", "--json")))
        self.assertIsInstance(entries, list)
        for entry in entries:
            self.assertEqual(set(entry), {"name", "size", "replicas"})
        self.assertIn({"name": "ls-json.bin", "size": 5000, "replicas": 3}, entries)
        # Only the owner lists it: A holds a replica it cannot read.
        names = [e["name"] for e in json.loads(self.assert_ok(self.net.a.dfs("ls", "--json")))]
        self.assertNotIn("ls-json.bin", names)

    def test_get_after_local_copy_lost(self) -> None:
        data = payload(200_000)
        _, rel = self.put(self.net.c, data, "lost-locally.bin")
        self.assert_held_by_all(rel)
        (self.net.c.data_dir / rel).unlink()
        result = self.net.c.dfs("get", "lost-locally.bin")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, data)
        self.assertIn("from peer", result.stderr.decode())
        self.assertTrue((self.net.c.data_dir / rel).is_file(), "local copy not restored")
        # The next get is served locally again, without a note.
        again = self.net.c.dfs("get", "lost-locally.bin")
        self.assertEqual(again.stdout, data)
        self.assertEqual(again.stderr, b"")

    def _flip(self, path: Path, offset: int | None = None) -> None:
        raw = bytearray(path.read_bytes())
        where = len(raw) // 2 if offset is None else offset
        raw[where] ^= 0x01
        path.write_bytes(bytes(raw))

    def _get_never_wrong(self, name: str, data: bytes) -> bool:
        """`dfs get -o OUT`: correct bytes, or a clean failure with no OUT. True if correct."""
        out = self.tempdir() / "out.bin"
        result = self.net.c.dfs("get", name, "-o", str(out), check=False)
        if result.returncode == 0:
            self.assertEqual(out.read_bytes(), data)
            return True
        self.assert_clean_failure(result)
        self.assertFalse(out.exists(), "a failed get left its output file")
        self.assertEqual([p.name for p in out.parent.iterdir()], [], "partial file left")
        return False

    def test_damaged_local_copy(self) -> None:
        data = payload(3_000_000)
        _, rel = self.put(self.net.c, data, "damaged-locally.bin")
        self._flip(self.net.c.data_dir / rel)
        # The read goes on from a peer at the damaged chunk (docs/security.md): the
        # first get already returns the right bytes, and repairs the local copy.
        self.assertTrue(self._get_never_wrong("damaged-locally.bin", data))
        wait_until(
            lambda: (
                (self.net.c.data_dir / rel).is_file()
                and (self.net.c.data_dir / rel).read_bytes()
                == (self.net.a.data_dir / rel).read_bytes()
            ),
            "the local copy to be repaired",
        )
        self.assertTrue(self._get_never_wrong("damaged-locally.bin", data))

    def test_damaged_header_of_local_copy(self) -> None:
        data = payload(100_000)
        _, rel = self.put(self.net.c, data, "damaged-header.bin")
        self._flip(self.net.c.data_dir / rel, offset=40)
        # Damage in the header is found before any byte is sent: served from a peer.
        self.assertTrue(self._get_never_wrong("damaged-header.bin", data))

    def test_damaged_replica_on_a_peer(self) -> None:
        data = payload(3_000_000)
        _, rel = self.put(self.net.c, data, "damaged-replica.bin")
        self._flip(self.net.a.data_dir / rel)
        self._flip(self.net.b.data_dir / rel)
        (self.net.c.data_dir / rel).unlink()
        # Both peers hold bad ciphertext: the owner must never decrypt it into wrong bytes.
        self.assertFalse(self._get_never_wrong("damaged-replica.bin", data))
        self.assertFalse((self.net.c.data_dir / rel).exists(), "damaged data restored")
        # Storing the file again repairs every copy.
        self.put_again(data, "damaged-replica.bin")
        self.assertTrue(self._get_never_wrong("damaged-replica.bin", data))
        for node in (self.net.a, self.net.b):
            self.assertEqual(
                (node.data_dir / rel).read_bytes(), (self.net.c.data_dir / rel).read_bytes()
            )

    def put_again(self, data: bytes, name: str) -> None:
        source = self.tempdir() / "again"
        source.write_bytes(data)
        self.assertIn("2 of 2", self.assert_ok(self.net.c.dfs("put", str(source), "--name", name)))

    def test_rm_everywhere(self) -> None:
        _, rel = self.put(self.net.c, payload(10_000), "to-remove.bin")
        self.assert_held_by_all(rel)
        out = self.assert_ok(self.net.c.dfs("rm", "to-remove.bin"))
        self.assertIn("to-remove.bin", out)
        for node in self.net.nodes:
            self.assertFalse((node.data_dir / rel).exists(), f"still on {node.port}")
        self.assert_clean_failure(self.net.c.dfs("get", "to-remove.bin", check=False))
        names = [e["name"] for e in json.loads(self.assert_ok(self.net.c.dfs("ls", "--json")))]
        self.assertNotIn("to-remove.bin", names)
        self.assert_clean_failure(self.net.c.dfs("rm", "never-stored.bin", check=False))

    def test_names(self) -> None:
        long_name = "d/" + "é" * 511  # 2 + 1022 = 1024 bytes of UTF-8
        self.assertEqual(len(long_name.encode()), 1024)
        names = [
            "reports/2026/q1.pdf",
            "../../etc/passwd",
            "/abs/olute",
            "Änderungen — 報告 🚀.txt",
            "with space and 'quote'",
            long_name,
        ]
        stored = {}
        for i, name in enumerate(names):
            data = payload(1000 + i)
            _, rel = self.put(self.net.c, data, name)
            stored[name] = (data, rel)
        for name, (data, rel) in stored.items():
            self.assert_held_by_all(rel)
            result = self.net.c.dfs("get", name)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(result.stdout, data)
        listed = {e["name"] for e in json.loads(self.assert_ok(self.net.c.dfs("ls", "--json")))}
        self.assertTrue(set(names) <= listed, set(names) - listed)
        # Nothing escaped the store: every file in it is a blob at its hashed path,
        # and no part of any name became a path anywhere.
        parts = {part for name in names for part in name.split("/")} - {"", "..", "."}
        for node in self.net.nodes:
            for rel in store_blobs(node):
                self.assertRegex(rel.removeprefix("store/"), BLOB_PATH)
        for path in self.net.root.rglob("*"):
            self.assertNotIn(path.name, parts, f"a file name became a path: {path}")
        self.assertEqual(
            sorted(p.name for p in self.net.root.iterdir() if p.is_dir()),
            sorted(str(n.port) for n in self.net.nodes),
        )

        too_long = "x" * 1025
        line = self.assert_clean_failure(
            self.net.c.dfs("put", "-", "--name", too_long, input=b"data", check=False)
        )
        self.assertNotIn(too_long, line)
        self.assert_clean_failure(self.net.c.dfs("get", too_long, check=False))
        self.assert_clean_failure(self.net.c.dfs("put", "-", "--name", "", input=b"x", check=False))

    def test_nul_in_name_is_refused(self) -> None:
        # argv cannot carry NUL: the HTTP API is the only way to send one.
        before = store_blobs(self.net.c)
        status, body = api_request(self.net.c, "PUT", "/v1/files/a%00b", b"data")
        self.assertEqual(status, 400, body)
        self.assertIn("error", json.loads(body))
        status, _ = api_request(self.net.c, "GET", "/v1/files/a%00b")
        self.assertEqual(status, 400)
        self.assertEqual(store_blobs(self.net.c), before)

    def test_api_needs_the_token(self) -> None:
        url = (self.net.c.data_dir / "api.url").read_text().strip()
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request("GET", "/v1/files")
            response = conn.getresponse()
            response.read()
            self.assertEqual(response.status, 401)
        finally:
            conn.close()

    def test_bad_input(self) -> None:
        c = self.net.c
        tmp = self.tempdir()
        self.assert_clean_failure(c.dfs("put", str(tmp / "missing.txt"), check=False))
        self.assert_clean_failure(c.dfs("put", str(tmp), check=False))
        self.assert_clean_failure(c.dfs("get", "no-such-file.bin", check=False))
        self.assert_clean_failure(c.dfs("put", "-", input=b"no name", check=False))

        not_a_node = tmp / "not-a-node"
        not_a_node.mkdir()
        self.assert_clean_failure(dfs("--node", str(not_a_node), "ls", env=clean_env()))
        self.assert_clean_failure(dfs("--node", str(tmp / "absent"), "ls", env=clean_env()))
        self.assert_clean_failure(dfs("ls", env=clean_env()))

        # A node that died without cleaning up: api.url points at nothing.
        stale = tmp / "stale"
        (stale / "private").mkdir(parents=True)
        (stale / "private" / "api_token").write_text("token\n")
        (stale / "api.url").write_text(f"http://127.0.0.1:{free_port()}/\n")
        self.assert_clean_failure(dfs("--node", str(stale), "ls", env=clean_env()))

    def test_dfs_node_environment_and_stdin(self) -> None:
        data = payload(70_000)
        env = clean_env(DFS_NODE=str(self.net.c.data_dir))
        out = self.assert_ok(dfs("put", "-", "--name", "from-stdin.bin", env=env, input=data))
        self.assertIn("2 of 2 connected peers", out)
        result = dfs("get", "from-stdin.bin", env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, data)


class StoppedNodeTests(ProcessTestCase):
    def test_node_dir_of_a_stopped_node(self) -> None:
        node = self.start_node(free_port(), self.tempdir() / "node")
        self.assert_ok(node.dfs("status"))
        node.stop()
        self.assert_clean_failure(node.dfs("ls", check=False))
        self.assert_clean_failure(node.dfs("get", "anything", check=False))

    def test_killed_node(self) -> None:
        node = self.start_node(free_port(), self.tempdir() / "node")
        node.stop(signal.SIGKILL)  # leaves a stale api.url behind
        self.assert_clean_failure(node.dfs("status", check=False))


class IdentityTests(ProcessTestCase):
    def test_identity_persists_across_restart(self) -> None:
        port = free_port()
        node = self.start_node(port, self.tempdir() / "node")
        first = node.status()["node_id"]
        self.assertRegex(first, HEX64)
        node.stop()
        node.start()
        node.wait_ready()
        self.assertEqual(node.status()["node_id"], first)

    def test_private_dir_modes(self) -> None:
        node = self.start_node(free_port(), self.tempdir() / "node")
        private = node.data_dir / "private"
        self.assertEqual(stat.S_IMODE(private.stat().st_mode), 0o700)
        files = list(private.iterdir())
        self.assertTrue(files)
        for path in files:
            # Regular files, and the API socket for the local dfs command.
            kind = stat.S_IFMT(path.lstat().st_mode)
            self.assertIn(kind, (stat.S_IFREG, stat.S_IFSOCK), path)
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, path)
        self.assertTrue(stat.S_ISSOCK((private / "api.sock").stat().st_mode))

    def test_refuses_an_open_private_dir(self) -> None:
        node = self.start_node(free_port(), self.tempdir() / "node")
        node.stop()
        (node.data_dir / "private").chmod(0o755)
        node.start()
        # NodeFailed carries the process's exit status, its stderr and its log's tail.
        error = self.assertRaises(NodeFailed, node.wait_ready)
        assert node.process is not None
        self.assertNotEqual(node.process.returncode, 0)
        self.assertFalse((node.data_dir / "api.url").exists())
        self.assertIn("chmod 700", str(error))
        self.assertNotIn("Traceback", str(error))


class LatePeerTests(ProcessTestCase):
    def test_peer_that_starts_later(self) -> None:
        root = self.tempdir()
        late_port = free_port()
        early = self.start_node(free_port(), root / "early", peers=[late_port])
        status = early.status()
        self.assertEqual([p["state"] == "connected" for p in status["peers"]], [False])
        late = self.start_node(late_port, root / "late")
        early.wait_peers(1)
        late.wait_peers(1)
        source = root / "late-file.bin"
        source.write_bytes(payload(20_000))
        out = self.assert_ok(early.dfs("put", str(source)))
        self.assertIn("1 of 1 connected peers", out)
        owner = early.status()["node_id"]
        held = list((late.data_dir / "store" / owner).rglob("*"))
        self.assertEqual(len([p for p in held if p.is_file()]), 1)
        # A peer that goes away is being dialled again, not "refused".
        late.stop()
        deadline = time.monotonic() + 30
        while (peer := early.status()["peers"][0])["state"] == "connected":
            self.assertLess(time.monotonic(), deadline, "the stopped peer still shows connected")
            time.sleep(0.05)
        self.assertEqual(peer["state"], "connecting")


class CatchUpTests(ProcessTestCase):
    def test_peer_that_was_down_during_a_put_gets_the_file_when_it_comes_back(self) -> None:
        root = self.tempdir()
        away_port = free_port()
        owner = self.start_node(free_port(), root / "owner", peers=[away_port])
        data = payload(3_000_000)
        source = root / "while-away.bin"
        source.write_bytes(data)
        out = self.assert_ok(owner.dfs("put", str(source)))
        self.assertIn("0 of 0 connected peers", out)
        owner_id = owner.status()["node_id"]

        away = self.start_node(away_port, root / "away")
        away.wait_peers(1)
        deadline = time.monotonic() + 30
        store = away.data_dir / "store" / owner_id
        while not [p for p in store.rglob("*") if p.is_file()]:
            self.assertLess(time.monotonic(), deadline, "the returning peer never got the file")
            time.sleep(0.05)
        # The replica is the owner's blob, byte for byte, and the owner counts it.
        [replica] = [p for p in store.rglob("*") if p.is_file()]
        [original] = [p for p in (owner.data_dir / "store" / owner_id).rglob("*") if p.is_file()]
        self.assertEqual(replica.read_bytes(), original.read_bytes())
        listing = json.loads(self.assert_ok(owner.dfs("ls", "--json")))
        self.assertEqual(listing, [{"name": "while-away.bin", "size": len(data), "replicas": 2}])


class TacTests(ProcessTestCase):
    def start_tac(self, tac: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        argv = [*_script("twistd"), "-n", "-y", str(tac), "--pidfile=", f"--logfile={cwd}/tac.log"]
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

        def stop() -> None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stderr is not None:
                process.stderr.close()

        self.addCleanup(stop)
        return process

    def attach(self, port: int, data_dir: Path, process: subprocess.Popen[bytes]) -> NodeProcess:
        """A NodeProcess view of one node of a tac process (for waiting and `dfs`)."""
        node = NodeProcess(port, data_dir)
        node.process = process
        node.log_path = data_dir.parent / "tac.log"
        return node

    def test_three_nodes_tac(self) -> None:
        busy = [port for port in (3000, 4000, 5000) if port_busy(port)]
        if busy:
            cannot_run(f"tac/three_nodes.tac needs the fixed ports 3000-5000; busy: {busy}")
        root = self.tempdir()
        process = self.start_tac(TAC / "three_nodes.tac", clean_env(DFS_ROOT=str(root)), root)
        nodes = {port: self.attach(port, root / str(port), process) for port in (3000, 4000, 5000)}
        for node in nodes.values():
            node.wait_ready()
        for node in nodes.values():
            node.wait_peers(2)
        source = root / "via-tac.bin"
        data = payload(50_000)
        source.write_bytes(data)
        out = self.assert_ok(nodes[5000].dfs("put", str(source)))
        self.assertIn("2 of 2 connected peers", out)
        owner = nodes[5000].status()["node_id"]
        blobs = store_blobs(nodes[5000])
        self.assertEqual(len(blobs), 1)
        (rel,) = blobs
        self.assertTrue(rel.startswith(f"store/{owner}/"))
        for port in (3000, 4000):
            self.assertTrue((nodes[port].data_dir / rel).is_file(), f"not on {port}")
        self.assertEqual(nodes[5000].dfs("get", "via-tac.bin").stdout, data)

    def test_node_tac(self) -> None:
        root = self.tempdir()
        plugin_node = self.start_node(free_port(), root / "plugin")
        port = free_port()
        env = clean_env(
            DFS_PORT=str(port),
            DFS_PEERS=str(plugin_node.port),
            DFS_DATA_DIR=str(root / "tac-node"),
            DFS_ORG="tac-org",
        )
        process = self.start_tac(TAC / "node.tac", env, root)
        node = self.attach(port, root / "tac-node", process)
        node.wait_ready()
        status = node.wait_peers(1)
        self.assertEqual(status["org"], "tac-org")
        rows = plugin_node.wait_peers(1)["peers"]
        self.assertEqual([(p["org"], p["state"]) for p in rows], [("tac-org", "connected")])
