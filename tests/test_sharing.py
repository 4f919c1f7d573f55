"""Read keys: one org hands its key to another, which then reads its files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.crypto import OrgKey
from dfs_twisted.keys import Keyring, ReadKey, ReadKeyError
from dfs_twisted.launcher import NodeProcess

from .shared import seed_network

A, B = "a" * 64, "ab" + "c" * 62


@pytest.mark.unit
class ReadKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dfs-keys-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_round_trip_mode_and_no_overwrite(self) -> None:
        key = ReadKey(A, "acme", OrgKey.generate())
        path = self.dir / "acme.key"
        key.write_new(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(ReadKey.from_bytes(path.read_bytes()), key)
        self.assertRaises(ReadKeyError, key.write_new, path)
        self.assertEqual(json.loads(path.read_text())["version"], 1)

    def test_malformed_files_refused(self) -> None:
        good = json.loads(ReadKey(A, "acme", OrgKey.generate()).to_bytes())
        for change in [
            {"format": "other"},
            {"version": 2},
            {"org_id": "../../etc"},
            {"key": "zz"},
            {"key": "00" * 16},
            {"org": ""},
        ]:
            self.assertRaises(ReadKeyError, ReadKey.from_bytes, json.dumps(good | change).encode())
        self.assertRaises(ReadKeyError, ReadKey.from_bytes, b"\xff not json")

    def test_keyring_finds_by_name_id_and_prefix(self) -> None:
        ring = Keyring(self.dir / "keys")
        acme, abc = ReadKey(A, "acme", OrgKey.generate()), ReadKey(B, "abc", OrgKey.generate())
        ring.add(acme)
        ring.add(abc)
        self.assertEqual(ring.find("acme"), acme)
        self.assertEqual(ring.find("id:" + B), abc)
        self.assertEqual(ring.find("id:aaaaaaaa"), acme)
        self.assertEqual(ring.find("id:AAAAAAAA"), acme)
        # An id is given as id:..., with at least 8 hex characters; a bare id is a name.
        self.assertIn("at least 8", str(self.assertRaises(ReadKeyError, ring.find, "id:aaaa")))
        self.assertIn("id:" + B, str(self.assertRaises(ReadKeyError, ring.find, B)))
        self.assertRaises(ReadKeyError, ring.find, "id:nothex!")
        self.assertRaises(ReadKeyError, ring.find, "nobody")
        # A newer key for the same org replaces the old one.
        newer = ReadKey(A, "acme", OrgKey.generate())
        ring.add(newer)
        self.assertEqual(ring.find("acme"), newer)
        self.assertEqual(os.stat(self.dir / "keys").st_mode & 0o777, 0o700)

    def test_ambiguous_prefix_refused(self) -> None:
        ring = Keyring(self.dir / "keys")
        one = ReadKey("abcd0000" + "0" * 56, "one", OrgKey.generate())
        ring.add(one)
        ring.add(ReadKey("abcd0000" + "1" * 56, "two", OrgKey.generate()))
        with self.assertRaises(ReadKeyError) as caught:
            ring.find("id:abcd0000")
        # The candidates are named by their full ids.
        self.assertIn("id:abcd0000" + "0" * 56, str(caught.exception))
        self.assertIn("id:abcd0000" + "1" * 56, str(caught.exception))
        self.assertEqual(ring.find("id:abcd00000"), one)

    def test_a_name_never_matches_an_id(self) -> None:
        ring = Keyring(self.dir / "keys")
        real = ReadKey(A, "acme", OrgKey.generate())
        # Another org names itself after the start of acme's id.
        shadow = ReadKey(B, A[:16], OrgKey.generate())
        ring.add(real)
        ring.add(shadow)
        self.assertEqual(ring.find("id:" + A[:16]), real)
        self.assertEqual(ring.find(A[:16]), shadow)


@pytest.mark.processes
class SharingTests(SynchronousTestCase):
    """The seed's promise: an org handed another's key reads that org's files."""

    def setUp(self) -> None:
        self.root, self.a, self.b, self.c = seed_network(self, "dfs-sharing-")

    def fail_line(self, node: NodeProcess, *args: str) -> str:
        result = node.dfs(*args, check=False)
        self.assertNotEqual(result.returncode, 0)
        err = result.stderr.decode()
        self.assertTrue(err.startswith("dfs: "), err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertEqual(result.stdout, b"")
        return err

    def test_handed_key_reads_files_from_replica_and_from_peers(self) -> None:
        data = os.urandom(300_000)
        source = self.root / "q1.bin"
        source.write_bytes(data)
        self.c.dfs("put", str(source), "--name", "reports/q1.bin")
        c_org = self.c.status()["org"]
        c_id = self.c.status()["node_id"]

        # Without C's key, A can neither read nor list C's files, and dumps no ciphertext.
        self.assertIn(
            "no read key", self.fail_line(self.a, "get", "reports/q1.bin", "--org", c_org)
        )
        self.assertIn("no read key", self.fail_line(self.a, "ls", "--org", c_org))

        key_file = self.root / "c.key"
        self.c.dfs("key", "export", "-o", str(key_file))
        self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)
        self.assertIn("exists", self.fail_line(self.c, "key", "export", "-o", str(key_file)))
        self.assertIn("own key", self.fail_line(self.c, "key", "import", str(key_file)))
        self.a.dfs("key", "import", str(key_file))

        # From the replica A holds, by org name, id and id prefix.
        for org in (c_org, "id:" + c_id, "id:" + c_id[:8]):
            got = self.a.dfs("get", "reports/q1.bin", "--org", org)
            self.assertEqual(got.stdout, data)
            # Whichever way ORG was given, the full id of the org read is printed.
            self.assertEqual(got.stderr.decode(), f"reports/q1.bin of org id:{c_id}\n")
        listing = json.loads(self.a.dfs("ls", "--json", "--org", c_org).stdout)
        self.assertEqual(listing, [{"name": "reports/q1.bin", "size": len(data), "replicas": 3}])

        # A loses its replica: it reads from a peer, and does not keep C's file.
        replicas = [p for p in (self.a.data_dir / "store" / c_id).rglob("*") if p.is_file()]
        self.assertEqual(len(replicas), 1)
        replicas[0].unlink()
        got = self.a.dfs("get", "reports/q1.bin", "--org", c_org)
        self.assertEqual(got.stdout, data)
        self.assertIn("read from peer", got.stderr.decode())
        self.assertFalse(replicas[0].exists())

        # The read key gives no write: the API refuses writes aimed at another org.
        self.assert_refused_write(self.a, "PUT", c_org)
        self.assert_refused_write(self.a, "DELETE", c_org)
        self.assertEqual(self.c.dfs("get", "reports/q1.bin").stdout, data)

        # Unknown names and a wrong key fail cleanly.
        self.assertIn("no such file", self.fail_line(self.a, "get", "nope", "--org", c_org))
        wrong = self.root / "wrong.key"
        wrong.write_bytes(ReadKey(c_id, c_org, OrgKey.generate()).to_bytes())
        self.b.dfs("key", "import", str(wrong))
        self.fail_line(self.b, "get", "reports/q1.bin", "--org", c_org)
        bad = self.root / "bad.key"
        bad.write_text("hello")
        self.assertIn("not a usable read key", self.fail_line(self.a, "key", "import", str(bad)))

    def assert_refused_write(self, node: NodeProcess, method: str, org: str) -> None:
        url = (node.data_dir / "api.url").read_text().strip()
        token = (node.data_dir / "private" / "api_token").read_text().strip()
        request = urllib.request.Request(
            f"{url}v1/files/reports%2Fq1.bin?org={org}",
            data=b"overwrite" if method == "PUT" else None,
            method=method,
            headers={"Authorization": f"Bearer {token}"},
        )
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        self.assertEqual(caught.exception.code, 400)
