"""dfs backup / dfs restore: private/ in one passphrase-encrypted archive, and back."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import backup
from dfs_twisted.backup import BackupError, Entry
from dfs_twisted.launcher import BIN, NodeProcess, free_port

PASSPHRASE = "correct horse battery staple"


@pytest.mark.unit
class ArchiveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-backup-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def entries(self) -> list[Entry]:
        return [
            Entry("dfs.toml", b'org = "acme"\n'),
            Entry("private/node.key", b"KEY"),
            Entry("private/keys/" + "a" * 64 + ".key", b"READ KEY"),
        ]

    def test_round_trip(self) -> None:
        archive = backup.seal(self.entries(), PASSPHRASE)
        self.assertNotIn(b"KEY", archive)
        self.assertNotIn(b"acme", archive)
        self.assertEqual(backup.unseal(archive, PASSPHRASE), self.entries())

    def test_wrong_passphrase_or_any_changed_byte_fails(self) -> None:
        archive = backup.seal(self.entries(), PASSPHRASE)
        error = self.assertRaises(BackupError, backup.unseal, archive, "wrong passphrase!")
        self.assertIn("wrong passphrase", str(error))
        for where in (10, 20, backup.HEADER_SIZE + 5, len(archive) - 1):
            damaged = bytearray(archive)
            damaged[where] ^= 1
            self.assertRaises(BackupError, backup.unseal, bytes(damaged), PASSPHRASE)
        self.assertRaises(BackupError, backup.unseal, b"not a backup", PASSPHRASE)
        self.assertRaises(BackupError, backup.seal, self.entries(), "short")

    def test_only_dfs_toml_and_private_files_come_out(self) -> None:
        for bad in ("../evil", "/etc/passwd", "private/../../evil", "store/x", "private"):
            self.assertFalse(backup.is_safe_path(bad), bad)
        # An archive made by hand (with the passphrase) holding a path outside.
        plain = io.BytesIO()
        with tarfile.open(fileobj=plain, mode="w") as tar:
            info = tarfile.TarInfo("private/../../evil")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        sealed = backup.seal([Entry("private/x", b"")], PASSPHRASE)
        header = sealed[: backup.HEADER_SIZE]
        _, log2_n, r, p, salt, nonce = backup._HEADER.unpack(header)
        key = backup._key(PASSPHRASE, salt, log2_n, r, p)
        forged = header + AESGCM(key).encrypt(nonce, plain.getvalue(), header)
        error = self.assertRaises(BackupError, backup.unseal, forged, PASSPHRASE)
        self.assertIn("unexpected entry", str(error))

    def test_restore_never_overwrites(self) -> None:
        target = self.dir / "node"
        backup.restore(self.entries(), target)
        self.assertEqual((target / "private").stat().st_mode & 0o777, 0o700)
        self.assertEqual((target / "private" / "keys").stat().st_mode & 0o777, 0o700)
        self.assertEqual((target / "private" / "node.key").stat().st_mode & 0o777, 0o600)
        self.assertEqual((target / "dfs.toml").read_bytes(), b'org = "acme"\n')
        error = self.assertRaises(BackupError, backup.restore, self.entries(), target)
        self.assertIn("not empty", str(error))
        self.assertEqual((target / "private" / "node.key").read_bytes(), b"KEY")


def run_dfs(*args: str, passphrase: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DFS_NODE", "DFS_PASSPHRASE")}
    if passphrase is not None:
        env["DFS_PASSPHRASE"] = passphrase  # as a script would give it
    return subprocess.run([str(BIN / "dfs"), *args], capture_output=True, timeout=120, env=env)


@pytest.mark.processes
class BackupRestoreTests(SynchronousTestCase):
    """A node's private/ saved, its machine lost, restored elsewhere, its files recovered."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-restore-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_restore_onto_a_new_directory_then_recover(self) -> None:
        peer = NodeProcess(free_port(), self.dir / "peer")
        self.addCleanup(peer.stop)
        peer.start().wait_ready()
        port = free_port()
        owner_dir = self.dir / "owner"
        init = run_dfs(
            "init",
            str(owner_dir),
            "--port",
            str(port),
            "--org",
            "globex",
            "--peers",
            str(peer.port),
        )
        self.assertEqual(init.returncode, 0, init.stderr)
        owner = NodeProcess(port, owner_dir)
        self.addCleanup(owner.stop)
        owner.start().wait_ready()
        owner.wait_peers(1)
        data = os.urandom(200_000)
        owner.dfs("put", "-", "--name", "ledger.bin", input=data)
        owner_id = owner.status()["node_id"]

        archive = self.dir / "owner.dfsbak"
        made = run_dfs(
            "--node", str(owner_dir), "backup", "-o", str(archive), "--json", passphrase=PASSPHRASE
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(json.loads(made.stdout)["node_id"], owner_id)
        self.assertEqual(archive.stat().st_mode & 0o777, 0o600)
        token = (owner_dir / "private" / "api_token").read_bytes().strip()
        self.assertNotIn(token, archive.read_bytes())
        again = run_dfs(
            "--node", str(owner_dir), "backup", "-o", str(archive), passphrase=PASSPHRASE
        )
        self.assertNotEqual(again.returncode, 0)
        self.assertIn(b"exists", again.stderr)
        no_passphrase = run_dfs("--node", str(owner_dir), "backup", "-o", str(self.dir / "x"))
        self.assertIn(b"DFS_PASSPHRASE", no_passphrase.stderr)

        # The machine is lost: the whole node directory is gone.
        owner.stop()
        shutil.rmtree(owner_dir)

        new_dir = self.dir / "new-machine" / "dfs"
        wrong = self.dir / "wrong"
        wrong.write_text("not the passphrase\n")
        refused = run_dfs("restore", str(archive), str(new_dir), "--passphrase-file", str(wrong))
        self.assertIn(b"wrong passphrase", refused.stderr)
        self.assertEqual(len(refused.stderr.splitlines()), 1)
        self.assertFalse(new_dir.exists())
        passphrase_file = self.dir / "passphrase"
        passphrase_file.write_text(PASSPHRASE + "\n")
        restored = run_dfs(
            "restore", str(archive), str(new_dir), "--passphrase-file", str(passphrase_file)
        )
        self.assertEqual(restored.returncode, 0, restored.stderr)
        self.assertIn(owner_id, restored.stdout.decode())

        # Started from the restored directory alone: dfs.toml gives port, org and peers.
        node = NodeProcess(port, new_dir)
        node.argv = lambda: [  # type: ignore[method-assign]
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={node.log_path}",
            "dfs",
            "--data-dir",
            str(new_dir),
            "--no-create",
        ]
        self.addCleanup(node.stop)
        node.start().wait_ready()
        node.wait_peers(1)
        status = node.status()
        self.assertEqual((status["node_id"], status["org"]), (owner_id, "globex"))
        self.assertIn("ledger.bin", node.dfs("recover").stdout.decode())
        self.assertEqual(node.dfs("get", "ledger.bin").stdout, data)
