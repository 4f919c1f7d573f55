"""Per-file grants: one file version for one node, and nothing else."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.crypto import (
    Decryptor,
    Encryptor,
    FileKey,
    IntegrityError,
    OrgKey,
    file_key,
    parse_header,
)
from dfs_twisted.grants import Grant, GrantError
from dfs_twisted.launcher import NodeProcess

from .shared import seed_network

RECIPIENT = "b" * 64


def blob(key: OrgKey, signer: Ed25519PrivateKey, name: str, data: bytes) -> bytes:
    enc = Encryptor(key, signer, name, 7)
    return enc.header + b"".join(enc.update(data)) + enc.finalize()


def decrypt(key: object, data: bytes) -> bytes:
    dec = Decryptor(key)  # type: ignore[arg-type]
    plain = dec.feed(data)
    last, _ = dec.finish()
    return plain + last


@pytest.mark.unit
class GrantTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.signer = Ed25519PrivateKey.generate()
        self.key = OrgKey.generate()
        self.box = X25519PrivateKey.generate()
        self.shared = blob(self.key, self.signer, "q1.pdf", b"the shared report")
        self.other = blob(self.key, self.signer, "salaries.xlsx", b"not shared")
        box_public = self.box.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.grant = Grant.issue(
            self.signer,
            "acme",
            file_key(self.key, parse_header(self.shared)),
            "q1.pdf",
            RECIPIENT,
            box_public,
        )

    def test_recipient_reads_that_file_and_no_other(self) -> None:
        grant = Grant.from_bytes(self.grant.to_bytes())
        file = grant.open(self.box, RECIPIENT)
        self.assertEqual(decrypt(file, self.shared), b"the shared report")
        self.assertRaises(IntegrityError, decrypt, file, self.other)
        self.assertNotIn(self.key.root.hex(), self.grant.to_bytes().decode())

    def test_only_the_recipient_node_opens_it(self) -> None:
        self.assertRaises(GrantError, self.grant.open, self.box, "c" * 64)
        self.assertRaises(GrantError, self.grant.open, X25519PrivateKey.generate(), RECIPIENT)

    def test_altered_or_forged_grants_are_refused(self) -> None:
        good = json.loads(self.grant.to_bytes())
        other_signer = Ed25519PrivateKey.generate()
        mallory = Encryptor(self.key, other_signer, "x", 0).owner
        forged = Grant.issue(
            other_signer,
            "mallory",
            FileKey(mallory, good["blob"], 7, bytes(32)),
            "q1.pdf",
            RECIPIENT,
            self.box.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        )
        for change in [
            {"name": "salaries.xlsx"},
            {"version": 8},
            {"recipient": "c" * 64},
            {"owner_org": "someone else"},
            {"owner_key": forged.owner_key.hex()},  # then the owner id does not match
            {"signature": "00" * 64},
            {"wrapped": "00" * 60},
            {"dfs_grant": 2},
            {"blob": "../../etc"},
        ]:
            self.assertRaises(GrantError, Grant.from_bytes, json.dumps(good | change).encode())
        self.assertRaises(GrantError, Grant.from_bytes, b"\xff")
        self.assertRaises(GrantError, Grant.from_bytes, b"{" * 20000)


@pytest.mark.processes
class GrantNetworkTests(SynchronousTestCase):
    """The seed's three nodes: A shares one file with C."""

    def setUp(self) -> None:
        self.root, self.a, self.b, self.c = seed_network(self, "dfs-grants-")
        self.files = Path(tempfile.mkdtemp(prefix="dfs-grant-files-"))
        self.addCleanup(shutil.rmtree, self.files, True)

    def share(self, name: str, to: NodeProcess) -> Path:
        grant = self.files / f"{name}-{to.port}.grant"
        org = to.status()["org"]
        out = self.a.dfs("share", name, "--to", org, "-o", str(grant)).stdout.decode()
        self.assertIn(f"wrote a grant of {name} for {org}", out)
        self.assertEqual(grant.stat().st_mode & 0o777, 0o600)
        return grant

    def test_share_one_file_with_one_org(self) -> None:
        self.a.dfs("put", "-", "--name", "q1.pdf", input=b"quarterly numbers\n")
        self.a.dfs("put", "-", "--name", "salaries.xlsx", input=b"private\n")
        grant = self.share("q1.pdf", self.c)
        self.assertEqual(self.c.dfs("get", "--grant", str(grant)).stdout, b"quarterly numbers\n")
        out = self.files / "q1-copy.pdf"
        self.c.dfs("get", "--grant", str(grant), "-o", str(out))
        self.assertEqual(out.read_bytes(), b"quarterly numbers\n")

        # C has no key to A's other files, and B cannot use C's grant.
        refused = self.c.dfs("get", "salaries.xlsx", "--org", self.a.status()["org"], check=False)
        self.assertNotEqual(refused.returncode, 0)
        wrong = self.b.dfs("get", "--grant", str(grant), check=False)
        self.assertNotEqual(wrong.returncode, 0)
        self.assertIn("this grant is for node", wrong.stderr.decode())
        self.assertEqual(wrong.stdout, b"")

        # A grant reads the version it was made for.
        self.a.dfs("put", "-", "--name", "q1.pdf", input=b"restated numbers\n")
        stale = self.c.dfs("get", "--grant", str(grant), check=False)
        self.assertNotEqual(stale.returncode, 0)
        self.assertIn("changed since it was shared", stale.stderr.decode())
        again = self.share("q1.pdf", self.b)
        self.assertEqual(self.b.dfs("get", "--grant", str(again)).stdout, b"restated numbers\n")

    def test_mistakes_get_one_line(self) -> None:
        for args, message in [
            (["share", "nothing.txt", "--to", "x", "-o", str(self.files / "n")], "no such file"),
            (["get", "--grant", str(self.files / "missing")], "cannot read"),
        ]:
            result = self.a.dfs(*args, check=False)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(message, result.stderr.decode())
            self.assertEqual(len(result.stderr.decode().strip().splitlines()), 1)
        self.a.dfs("put", "-", "--name", "f", input=b"x")
        result = self.a.dfs(
            "share", "f", "--to", "nobody-here", "-o", str(self.files / "g"), check=False
        )
        self.assertIn("no org 'nobody-here' among the peers", result.stderr.decode())
        self.assertFalse((self.files / "g").exists())

    def test_share_with_an_org_that_is_away(self) -> None:
        # A met C before; C's grant key was kept, so C need not be online to be given one.
        self.a.dfs("put", "-", "--name", "memo.txt", input=b"for c\n")
        c_org = self.c.status()["org"]
        self.c.stop()
        grant = self.files / "memo.grant"
        self.a.dfs("share", "memo.txt", "--to", c_org, "-o", str(grant))
        c = NodeProcess(self.c.port, self.c.data_dir, [self.a.port, self.b.port])
        self.addCleanup(c.stop)
        c.start().wait_ready()
        c.wait_peers(2)
        self.assertEqual(c.dfs("get", "--grant", str(grant)).stdout, b"for c\n")
