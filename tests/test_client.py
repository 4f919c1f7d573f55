"""The dfs command against real nodes: what it prints, what it refuses, where its token goes.

Real `twistd` processes and the real `dfs` script. A node that lies (hostile text
in its answers) and impostors on a node's old port are played by small servers
in this process: they stand for exactly what the tests claim the client resists.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import BIN, NodeProcess, free_port, start_network

from .environment import without_root_powers
from .shared import SharedFixture

pytestmark = pytest.mark.processes

ESCAPE = "\x1b[31mRED\x1b[0m"


def dfs(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if k != "DFS_NODE"}
    environment.update(env or {})
    return subprocess.run(
        [str(BIN / "dfs"), *args], capture_output=True, timeout=120, cwd=cwd, env=environment
    )


class Pair:
    """Two nodes: A, and B dialling A."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dfs-client-"))
        try:
            self.a, self.b = start_network(self.root, [(free_port(), []), (free_port(), [])])
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class CliTestCase(SynchronousTestCase):
    def tempdir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="dfs-cli-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def one_line(self, result: subprocess.CompletedProcess[bytes], *needles: str) -> str:
        stderr = result.stderr.decode(errors="replace")
        self.assertNotEqual(result.returncode, 0, f"unexpected success: {result.args}")
        self.assertNotIn("Traceback", stderr)
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, f"expected one line on stderr, got {stderr!r}")
        self.assertTrue(lines[0].startswith("dfs: "), lines[0])
        for needle in needles:
            self.assertIn(needle, lines[0])
        return lines[0]


class CommandTests(SharedFixture, CliTestCase):
    """One node (and a peer) for the tests of what dfs prints and refuses."""

    @classmethod
    def make_shared(cls) -> Pair:
        pair = Pair()
        # B dials A: a peer for the put summaries.
        pair.b.stop()
        pair.b = NodeProcess(pair.b.port, pair.b.data_dir, [pair.a.port]).start()
        pair.b.wait_ready()
        pair.b.wait_peers(1)
        return pair

    def setUp(self) -> None:
        self.pair: Pair = self.shared()
        self.addCleanup(self._shared_done)
        self.node: NodeProcess = self.pair.b

    def put(self, name: str, data: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
        source = self.tempdir() / "upload"
        source.write_bytes(data)
        return self.node.dfs("put", str(source), "--name", name, *extra)

    def test_closed_output_is_a_quiet_exit(self) -> None:
        self.put("big.bin", os.urandom(3 << 20))
        process = subprocess.Popen(
            [str(BIN / "dfs"), "--node", str(self.node.data_dir), "get", "big.bin"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        self.assertEqual(len(process.stdout.read(16)), 16)  # `| head -c 16`
        process.stdout.close()
        stderr = process.stderr.read()
        process.stderr.close()
        self.assertEqual(process.wait(60), 141)  # as a SIGPIPE'd Unix tool
        self.assertEqual(stderr, b"")

    def test_a_big_file_comes_back_whole_from_put_and_get_o(self) -> None:
        # Sent by sendfile, stored and read past the page cache (whole blocks and a
        # partial last one), written to OUT past it too.
        data = os.urandom((5 << 20) + 1234)
        self.put("whole.bin", data)
        out = self.tempdir() / "whole.out"
        self.node.dfs("get", "whole.bin", "-o", str(out))
        self.assertEqual(out.read_bytes(), data)

    def test_get_output_never_follows_a_planted_link(self) -> None:
        self.put("linked.bin", b"the real content\n")
        where = self.tempdir()
        victim = where / "victim"
        victim.write_bytes(b"precious\n")
        planted = where / ".out.bin.part"  # where an older dfs wrote its partial file
        planted.symlink_to(victim)
        self.node.dfs("get", "linked.bin", "-o", str(where / "out.bin"))
        self.assertEqual((where / "out.bin").read_bytes(), b"the real content\n")
        self.assertEqual(victim.read_bytes(), b"precious\n")
        self.assertTrue(planted.is_symlink())
        # A failed get leaves no temp file behind.
        self.node.dfs("get", "never-stored.bin", "-o", str(where / "no.bin"), check=False)
        self.assertEqual(
            sorted(p.name for p in where.iterdir()), [".out.bin.part", "out.bin", "victim"]
        )

    def test_a_directory_and_more_files_in_one_put(self) -> None:
        where = self.tempdir()
        top = where / "album"
        (top / "2024").mkdir(parents=True)
        small, big = os.urandom(1000), os.urandom((1 << 20) + 77)  # read; sent by the kernel
        (top / "cover.txt").write_bytes(small)
        (top / "2024" / "raw.bin").write_bytes(big)
        (top / "link").symlink_to("cover.txt")
        (where / "notes.txt").write_bytes(b"notes\n")
        done = self.node.dfs("put", str(top), str(where / "notes.txt"), "--json")
        answer = json.loads(done.stdout)
        self.assertEqual(
            sorted(stored["name"] for stored in answer["stored"]),
            ["album/2024/raw.bin", "album/cover.txt", "notes.txt"],
        )
        self.assertEqual(answer["failed"], [])
        self.assertEqual({stored["replicas"] for stored in answer["stored"]}, {2})
        self.assertIn("skipping", done.stderr.decode())  # the link, not followed
        self.assertEqual(self.node.dfs("get", "album/2024/raw.bin").stdout, big)
        self.assertEqual(self.node.dfs("get", "album/cover.txt").stdout, small)
        listed = {f["name"] for f in json.loads(self.node.dfs("ls", "--json").stdout)}
        self.assertNotIn("album/link", listed)
        # Without --json: one line for all of them.
        again = self.node.dfs("put", str(top)).stdout.decode()
        self.assertEqual(len(again.splitlines()), 1)
        self.assertIn("stored 2 files", again)

    def test_a_file_that_cannot_be_read_fails_alone(self) -> None:
        where = self.tempdir()
        (where / "fine.txt").write_bytes(b"fine\n")
        # A regular file whose reads fail (EIO): the other files are stored all the same.
        done = self.node.dfs("put", str(where / "fine.txt"), "/proc/self/mem", check=False)
        self.assertEqual(done.returncode, 1)
        stderr = done.stderr.decode()
        self.assertIn("cannot store mem: cannot read /proc/self/mem", stderr)
        self.assertEqual(stderr.splitlines()[-1], "dfs: 1 of 2 files not stored")
        self.assertEqual(self.node.dfs("get", "fine.txt").stdout, b"fine\n")

    def test_several_files_refused_before_any_is_stored(self) -> None:
        where = self.tempdir()
        for folder in ("one", "two"):
            (where / folder).mkdir()
            (where / folder / "same.txt").write_bytes(folder.encode())
        one, two = str(where / "one"), str(where / "two")
        self.one_line(self.node.dfs("put", one, two, "--name", "x", check=False), "--name")
        self.one_line(self.node.dfs("put", "-", one, check=False), "stdin")
        self.one_line(self.node.dfs("put", one, str(where / "nowhere"), check=False), "nowhere")
        clash = [f"{one}/same.txt", f"{two}/same.txt"]
        self.one_line(self.node.dfs("put", *clash, check=False), "both be stored as same.txt")
        latin1 = os.path.join(os.fsencode(where / "two"), b"caf\xe9.txt")
        with open(latin1, "wb") as f:
            f.write(b"x")
        self.one_line(self.node.dfs("put", one, two, check=False), "not UTF-8")
        os.unlink(latin1)
        (where / "two" / f"bad{ESCAPE}").write_bytes(b"x")
        self.one_line(self.node.dfs("put", one, two, check=False), "control characters")
        listed = {f["name"] for f in json.loads(self.node.dfs("ls", "--json").stdout)}
        self.assertFalse(listed & {"one/same.txt", "two/same.txt", "same.txt", "x"})

    def test_control_characters_refused_in_new_names(self) -> None:
        bad = f"evil\nname{ESCAPE}"
        line = self.one_line(self.node.dfs("put", "-", "--name", bad, input=b"x", check=False))
        self.assertIn("control characters", line)
        self.assertNotIn("\x1b", line)
        self.assertIn("evil\\x0aname\\x1b[31mRED", line)
        # The API refuses them too, whoever calls it.
        url = (self.node.data_dir / "api.url").read_text().strip()
        token = (self.node.data_dir / "private" / "api_token").read_text().strip()
        request = urllib.request.Request(
            url + "v1/files/evil%0Aname%1B%5B31m",
            data=b"x",
            method="PUT",
            headers={"Authorization": f"Bearer {token}"},
        )
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        self.assertEqual(caught.exception.code, 400)
        self.assertIn(b"control characters", caught.exception.read())
        names = [e["name"] for e in json.loads(self.node.dfs("ls", "--json").stdout)]
        self.assertFalse([n for n in names if "evil" in n])

    def test_quiet_and_json_results(self) -> None:
        quiet = self.put("quiet.txt", b"shh\n", "-q")
        self.assertEqual((quiet.stdout, quiet.stderr), (b"", b""))
        stored = json.loads(self.put("report.txt", b"numbers\n", "--json").stdout)
        self.assertEqual((stored["name"], stored["size"], stored["replicas"]), ("report.txt", 8, 2))
        self.assertEqual([p["ok"] for p in stored["peers"]], [True])

        out = self.tempdir() / "report.txt"
        got = json.loads(self.node.dfs("get", "report.txt", "-o", str(out), "--json").stdout)
        self.assertEqual((got["name"], got["size"], got["source"]), ("report.txt", 8, "local"))
        self.assertEqual(out.read_bytes(), b"numbers\n")
        self.one_line(self.node.dfs("get", "report.txt", "--json", check=False), "-o OUT")

        listing = json.loads(self.node.dfs("ls", "--json").stdout)
        self.assertIn({"name": "report.txt", "size": 8, "replicas": 2}, listing)
        long = json.loads(self.node.dfs("ls", "-l", "--json").stdout)
        [row] = [e for e in long if e["name"] == "report.txt"]
        self.assertIsInstance(row["mtime"], int | float)
        human = self.node.dfs("ls", "-l").stdout.decode()
        self.assertRegex(human, r"report\.txt +8 B +\d{4}-\d\d-\d\d \d\d:\d\d +2")

        status = json.loads(self.node.dfs("status", "--json").stdout)
        self.assertEqual(len(status["node_id"]), 64)
        recovered = json.loads(self.node.dfs("recover", "--json").stdout)
        self.assertEqual(set(recovered), {"recovered", "errors"})

        grant = self.tempdir() / "g"
        a_id = self.pair.a.status()["node_id"]
        shared = json.loads(
            self.node.dfs(
                "share", "report.txt", "--to", f"id:{a_id[:8]}", "-o", str(grant), "--json"
            ).stdout
        )
        self.assertEqual(shared["org_id"], a_id)

        key = self.tempdir() / "b.key"
        exported = json.loads(self.node.dfs("key", "export", "-o", str(key), "--json").stdout)
        self.assertEqual(exported["org_id"], status["node_id"])
        imported = json.loads(self.pair.a.dfs("key", "import", str(key), "--json").stdout)
        self.assertEqual(imported["org_id"], status["node_id"])

        removed = json.loads(self.node.dfs("rm", "report.txt", "--json").stdout)
        self.assertEqual((removed["name"], removed["deleted_here"]), ("report.txt", True))
        # Global flags after the subcommand, and -q for rm.
        self.put("gone.txt", b"x")
        self.assertEqual(self.node.dfs("rm", "gone.txt", "-q").stdout, b"")

    def test_errors_name_what_they_are_about(self) -> None:
        self.one_line(self.node.dfs("get", "missing.bin", check=False), "missing.bin: no such file")
        self.one_line(self.node.dfs("rm", "missing.bin", check=False), "missing.bin: no such file")
        self.one_line(self.node.dfs("ls", "--org", "id:abc", check=False), "at least 8")
        line = self.one_line(self.node.dfs("ls", "--org", "ab" * 8, check=False), "no read key")
        self.assertIn("id:" + "ab" * 8, line)  # a hint: ids are written id:...

    def test_put_summary_in_one_unit_system(self) -> None:
        out = self.put("units.bin", os.urandom(300_000)).stdout.decode()
        self.assertRegex(out, r"stored units\.bin: 293\.0 KiB in [\d.]+ s \([\d.]+ [KMG]?i?B/s\)")
        self.assertNotRegex(out, r"\bMB/s")


class NodeByPortTests(CliTestCase):
    def test_node_port_finds_its_default_directory(self) -> None:
        cwd = self.tempdir()
        port = free_port()
        # The command users know, on an empty directory: ./dfs-PORT is made.
        process = subprocess.Popen(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "--logfile=node.log",
                "dfs",
                "--port",
                str(port),
            ],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        node = NodeProcess(port, cwd / f"dfs-{port}")
        node.process = process
        self.addCleanup(node.stop)
        node.wait_ready()
        status = json.loads(dfs("--node", str(port), "status", "--json", cwd=cwd).stdout)
        self.assertEqual(status["org"], f"node-{port}")
        self.one_line(dfs("--node", str(free_port()), "status", cwd=cwd), "no node directory")


class HostileNodeTests(CliTestCase):
    """A node (or its peers) answering with text that would paint the terminal."""

    ANSWERS: ClassVar[dict[str, object]] = {
        "/v1/files": [
            {"name": f"report{ESCAPE}\nforged", "size": 1, "replicas": 1, "here": True, "mtime": 0}
        ],
        "/v1/status": {
            "node_id": "a" * 64,
            "org": f"acme{ESCAPE}",
            "version": "0.1",
            "uptime": 1,
            "storage": {"own_bytes": 0, "held_for_others": {}},
            "peers": [
                {
                    "address": f"127.0.0.1:1{ESCAPE}",
                    "node_id": None,
                    "org": "x\x07",
                    "state": "refused",
                    "last_error": f"peer refused us: {ESCAPE}",
                }
            ],
        },
        "/v1/recover": {"recovered": [f"n{ESCAPE}"], "errors": [f"peer said {ESCAPE}"]},
        "PUT": {
            "blob": "b" * 64,
            "size": 1,
            "replicas": 1,
            "peers": [{"org": f"o{ESCAPE}", "node_id": "c" * 64, "ok": False, "error": ESCAPE}],
        },
        "/v1/files/gone": {"error": f"no such file {ESCAPE}"},
    }

    @contextmanager
    def fake_node(self) -> Iterator[Path]:
        node_dir = self.tempdir() / "node"
        private = node_dir / "private"
        private.mkdir(parents=True, mode=0o700)
        (private / "api_token").write_text("token\n")
        answers = self.ANSWERS

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if self.headers.get("transfer-encoding") == "chunked":
                    while size := int(self.rfile.readline(), 16):
                        self.rfile.read(size + 2)
                    self.rfile.readline()
                else:
                    self.rfile.read(length)
                path = self.path.split("?")[0]
                body = answers["PUT" if self.command == "PUT" else path]
                status = 404 if isinstance(body, dict) and "error" in body else 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = answer

            def log_message(self, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        server = Server(str(private / "api.sock"), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield node_dir
        finally:
            server.shutdown()
            server.server_close()

    def test_text_from_a_node_is_printed_escaped(self) -> None:
        with self.fake_node() as node_dir:
            n = str(node_dir)
            results = [
                dfs("--node", n, "ls"),
                dfs("--node", n, "ls", "-l"),
                dfs("--node", n, "status"),
                dfs("--node", n, "recover"),
                dfs("--node", n, "put", "-", "--name", "f", env={}),
                dfs("--node", n, "get", "gone"),
            ]
        for result in results:
            output = result.stdout + result.stderr
            self.assertNotIn(b"\x1b", output, result.args)
            self.assertNotIn(b"\x07", output, result.args)
            self.assertNotIn(b"forged", output.split(b"\n")[-1], result.args)
            self.assertIn(b"\\x1b[31mRED", output, result.args)
        listing = results[0].stdout.decode().splitlines()
        self.assertEqual(len(listing), 2, listing)  # header and one row: no forged line


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    key_path, cert_path = directory / "impostor.key", directory / "impostor.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class Impostor:
    """Listens where the node was and records every byte it is sent."""

    def __init__(self, port: int, tls: tuple[Path, Path] | None = None) -> None:
        self.received = bytearray()
        self.connections = 0
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen()
        self._socket.settimeout(0.2)
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(str(tls[1]), str(tls[0]))
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(2)
            try:
                if self._context is not None:
                    conn = self._context.wrap_socket(conn, server_side=True)
                while data := conn.recv(65536):
                    self.received += data
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        self._running = False
        self._thread.join(5)
        self._socket.close()


class CutTransferTests(CliTestCase):
    def test_a_get_cut_short_leaves_no_file(self) -> None:
        # No peer holds another copy: the node stops at the damaged chunk, mid-file,
        # after the writer thread has written what came before.
        node = NodeProcess(free_port(), self.tempdir() / "node")
        self.addCleanup(node.stop)
        node.start().wait_ready()
        where = self.tempdir()
        data = os.urandom(3 << 20)
        (where / "three.bin").write_bytes(data)
        blob = json.loads(node.dfs("put", str(where / "three.bin"), "--json").stdout)["blob"]
        owner = node.status()["node_id"]
        stored = node.data_dir / "store" / owner / blob[:2] / blob[2:4] / blob
        with stored.open("r+b") as f:
            f.seek((2 << 20) + 4096)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 1]))
        out = where / "out" / "three.bin"
        out.parent.mkdir()
        line = self.one_line(node.dfs("get", "three.bin", "-o", str(out), check=False))
        self.assertIn(f"was cut after {2 << 20} of {3 << 20} bytes", line)  # 2 good chunks
        self.assertEqual(list(out.parent.iterdir()), [])  # neither OUT nor its temp file


class TokenTests(CliTestCase):
    def test_token_never_goes_to_a_stale_api_port(self) -> None:
        node = NodeProcess(free_port(), self.tempdir() / "node")
        self.addCleanup(node.stop)
        url = node.start().wait_ready()
        token = (node.data_dir / "private" / "api_token").read_text().strip()
        node.stop(signal.SIGKILL)  # api.url stays behind, naming a free port
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        impostor = Impostor(port)
        self.addCleanup(impostor.stop)
        self.one_line(node.dfs("status", check=False), "not running")
        self.one_line(node.dfs("put", "-", "--name", "x", input=b"secret", check=False))
        impostor.stop()
        self.assertNotIn(token.encode(), bytes(impostor.received))
        self.assertEqual(impostor.connections, 0)

    def test_remote_client_checks_the_node_before_sending_the_token(self) -> None:
        tls_port = free_port()
        node = NodeProcess(
            free_port(),
            self.tempdir() / "node",
            extra=["--api-tls", f"tcp:{tls_port}:interface=127.0.0.1"],
        )
        self.addCleanup(node.stop)
        node.start().wait_ready()
        where = self.tempdir()
        access = where / "laptop.access"
        made = json.loads(node.dfs("access", "-o", str(access), "--json").stdout)
        self.assertEqual(access.stat().st_mode & 0o777, 0o600)
        node_id = node.status()["node_id"]
        self.assertEqual(made["node_id"], node_id)
        url = f"https://127.0.0.1:{tls_port}/"

        # As from another machine: no --node, no private/, only the access file (and,
        # as root, without root's power to read the node's files anyway).
        env = {**{k: v for k, v in os.environ.items() if k != "DFS_NODE"}, "HOME": str(where)}
        argv = [*without_root_powers(), str(BIN / "dfs"), "--api", url, "--token-file", str(access)]

        def remote(*args: str, given: bytes | None = None) -> bytes:
            done = subprocess.run(
                [*argv, *args], input=given, capture_output=True, timeout=120, env=env
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            return done.stdout

        answer = remote("put", "-", "--name", "from-afar.txt", "--json", given=b"hello\n")
        self.assertEqual(json.loads(answer)["name"], "from-afar.txt")
        self.assertEqual(node.dfs("get", "from-afar.txt").stdout, b"hello\n")
        # A file (not stdin) goes over TLS too, where the kernel cannot send it alone.
        big = where / "big.bin"
        big.write_bytes(os.urandom((2 << 20) + 7))
        remote("put", str(big), "--json")
        self.assertEqual(node.dfs("get", "big.bin").stdout, big.read_bytes())
        # And back over TLS into a file: read straight into the file's aligned buffers.
        remote("get", "big.bin", "-o", str(where / "big.out"))
        self.assertEqual((where / "big.out").read_bytes(), big.read_bytes())
        status = json.loads(
            dfs("--api", url, "--token-file", str(access), "status", "--json").stdout
        )
        self.assertEqual(status["node_id"], node_id)

        # The node goes; an impostor with another key takes its TLS port.
        token = (node.data_dir / "private" / "api_token").read_text().strip()
        node.stop(signal.SIGKILL)
        impostor = Impostor(tls_port, tls=self_signed(where))
        self.addCleanup(impostor.stop)
        line = self.one_line(dfs("--api", url, "--token-file", str(access), "status"))
        self.assertIn("not sending the token", line)
        self.assertIn(node_id, line)
        impostor.stop()
        self.assertEqual(impostor.connections, 1)
        self.assertNotIn(token.encode(), bytes(impostor.received))
        self.assertEqual(bytes(impostor.received), b"")

    def test_remote_client_refusals(self) -> None:
        where = self.tempdir()
        access = where / "a"
        access.write_text("not an access file")
        access.chmod(0o600)
        self.one_line(
            dfs("--api", "http://127.0.0.1:1/", "--token-file", str(access), "ls"), "https://"
        )
        self.one_line(dfs("--api", "https://127.0.0.1:1/", "ls"), "--token-file")
        self.one_line(
            dfs("--api", "https://127.0.0.1:1/", "--token-file", str(access), "ls"),
            "not a dfs access file",
        )
        access.chmod(0o644)
        self.one_line(
            dfs("--api", "https://127.0.0.1:1/", "--token-file", str(access), "ls"), "chmod 600"
        )


class NamesDoNotShadowIdsTests(CliTestCase):
    def test_a_peer_named_after_an_id_does_not_get_that_orgs_grant(self) -> None:
        root = self.tempdir()
        owner_port = free_port()
        owner = NodeProcess(owner_port, root / "owner")
        self.addCleanup(owner.stop)
        owner.start().wait_ready()
        victim = NodeProcess(free_port(), root / "victim", [owner_port])
        self.addCleanup(victim.stop)
        victim.start().wait_ready()
        victim_id = victim.status()["node_id"]
        # A member names its org after the first 16 characters of the victim's id.
        shadow = NodeProcess(free_port(), root / "shadow", [owner_port], org=victim_id[:16])
        self.addCleanup(shadow.stop)
        shadow.start().wait_ready()
        owner.wait_peers(2)
        owner.dfs("put", "-", "--name", "payroll.csv", input=b"salaries\n")

        grant = root / "payroll.grant"
        out = owner.dfs("share", "payroll.csv", "--to", f"id:{victim_id[:16]}", "-o", str(grant))
        self.assertIn(f"id:{victim_id}", out.stdout.decode())  # the full id, printed
        self.assertEqual(json.loads(grant.read_text())["recipient"], victim_id)
        self.assertEqual(victim.dfs("get", "--grant", str(grant)).stdout, b"salaries\n")
        refused = shadow.dfs("get", "--grant", str(grant), check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertEqual(refused.stdout, b"")
        # Given as a bare name, the prefix is the shadow's name, and says so by its id.
        named = owner.dfs("share", "payroll.csv", "--to", victim_id[:16], "-o", str(root / "g2"))
        shadow_id = shadow.status()["node_id"]
        self.assertIn(f"id:{shadow_id}", named.stdout.decode())
