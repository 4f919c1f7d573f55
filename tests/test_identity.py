"""Tests for dfs_twisted.identity: node keys, ids, private files and peer pins."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.identity import (
    KnownOrgs,
    NodeIdentity,
    OrgSpecError,
    PeerPins,
    PinMismatch,
    PrivateDirError,
    ensure_private_dir,
    load_or_create_secret,
    node_id_of,
)
from dfs_twisted.nodedir import CERT_FILE, KEY_FILE

pytestmark = pytest.mark.unit

ID_A = "a" * 64
ID_B = "b" * 64


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class PrivateDirTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.root.mkdir()

    def test_created_with_mode_0700(self) -> None:
        private = self.root / "a" / "private"
        ensure_private_dir(private)
        self.assertEqual(mode(private), 0o700)

    def test_existing_0700_accepted(self) -> None:
        private = self.root / "private"
        private.mkdir(mode=0o700)
        ensure_private_dir(private)
        self.assertEqual(mode(private), 0o700)

    def test_readable_by_others_refused(self) -> None:
        private = self.root / "private"
        private.mkdir()
        private.chmod(0o755)
        error = self.assertRaises(PrivateDirError, ensure_private_dir, private)
        self.assertIn("chmod 700", str(error))
        # Refusing must not quietly "fix" (or otherwise touch) the directory.
        self.assertEqual(mode(private), 0o755)

    def test_secret_created_once_with_mode_0600(self) -> None:
        path = self.root / "token"
        self.assertEqual(load_or_create_secret(path, b"first"), b"first")
        self.assertEqual(load_or_create_secret(path, b"second"), b"first")
        self.assertEqual(mode(path), 0o600)
        # No temporary files are left behind.
        self.assertEqual(sorted(p.name for p in self.root.iterdir()), ["token"])


class NodeIdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.private = Path(self.mktemp())
        ensure_private_dir(self.private)

    def test_created_once_and_reloaded_identical(self) -> None:
        first = NodeIdentity.load_or_create(self.private)
        key_bytes = (self.private / KEY_FILE).read_bytes()
        second = NodeIdentity.load_or_create(self.private)
        self.assertEqual(first.node_id, second.node_id)
        self.assertEqual(first.certificate, second.certificate)
        self.assertEqual((self.private / KEY_FILE).read_bytes(), key_bytes)

    def test_node_id_is_sha256_of_spki(self) -> None:
        identity = NodeIdentity.load_or_create(self.private)
        spki = identity.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertEqual(identity.node_id, hashlib.sha256(spki).hexdigest())
        self.assertEqual(node_id_of(identity.certificate), identity.node_id)
        self.assertEqual(len(identity.node_id), 64)

    def test_certificate_matches_key(self) -> None:
        identity = NodeIdentity.load_or_create(self.private)
        self.assertEqual(
            identity.certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            identity.key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def test_files_are_0600(self) -> None:
        NodeIdentity.load_or_create(self.private)
        for name in (KEY_FILE, CERT_FILE):
            self.assertEqual(mode(self.private / name), 0o600, name)
        self.assertEqual(mode(self.private), 0o700)

    def test_different_dirs_different_ids(self) -> None:
        other = Path(self.mktemp())
        ensure_private_dir(other)
        self.assertNotEqual(
            NodeIdentity.load_or_create(self.private).node_id,
            NodeIdentity.load_or_create(other).node_id,
        )

    def test_repr_hides_the_key(self) -> None:
        identity = NodeIdentity.load_or_create(self.private)
        self.assertNotIn("key", repr(identity).replace("node_id", ""))


class PeerPinsTests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Path(self.mktemp())
        ensure_private_dir(root)
        self.path = root / "known_peers.json"

    def test_first_check_pins(self) -> None:
        pins = PeerPins(self.path)
        self.assertIsNone(pins.get("127.0.0.1:4000"))
        pins.check("127.0.0.1:4000", ID_A)
        self.assertEqual(pins.get("127.0.0.1:4000"), ID_A)
        self.assertEqual(mode(self.path), 0o600)

    def test_same_id_accepted(self) -> None:
        pins = PeerPins(self.path)
        pins.check("127.0.0.1:4000", ID_A)
        pins.check("127.0.0.1:4000", ID_A)
        self.assertEqual(pins.get("127.0.0.1:4000"), ID_A)

    def test_different_id_refused(self) -> None:
        pins = PeerPins(self.path)
        pins.check("127.0.0.1:4000", ID_A)
        error = self.assertRaises(PinMismatch, pins.check, "127.0.0.1:4000", ID_B)
        self.assertIn("pinned", str(error))
        # The pin is unchanged by the refusal.
        self.assertEqual(pins.get("127.0.0.1:4000"), ID_A)

    def test_pins_are_per_address(self) -> None:
        pins = PeerPins(self.path)
        pins.check("127.0.0.1:4000", ID_A)
        pins.check("127.0.0.1:5000", ID_B)
        self.assertEqual(pins.get("127.0.0.1:5000"), ID_B)

    def test_persist_across_instances(self) -> None:
        PeerPins(self.path).check("127.0.0.1:4000", ID_A)
        reloaded = PeerPins(self.path)
        self.assertEqual(reloaded.get("127.0.0.1:4000"), ID_A)
        self.assertRaises(PinMismatch, reloaded.check, "127.0.0.1:4000", ID_B)
        self.assertEqual(json.loads(self.path.read_text()), {"127.0.0.1:4000": ID_A})


class KnownOrgsTests(SynchronousTestCase):
    def test_met_orgs_are_kept_and_found(self) -> None:
        path = Path(self.mktemp())
        orgs = KnownOrgs(path)
        orgs.met("ab" * 32, "acme", "11" * 32)
        orgs.met("cd" * 32, "beta", "22" * 32)
        again = KnownOrgs(path)
        self.assertEqual([k.org for k in again.find("acme")], ["acme"])
        self.assertEqual([k.box_key for k in again.find("id:cdcdcdcd")], ["22" * 32])
        self.assertRaises(OrgSpecError, again.find, "id:abab")  # too short for a prefix
        self.assertEqual(again.find("cdcdcdcd"), [])  # a name, and no org has it
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        path.write_text("not json")
        self.assertEqual(KnownOrgs(path).find("acme"), [])

    def test_names_do_not_shadow_ids(self) -> None:
        orgs = KnownOrgs(Path(self.mktemp()))
        victim = "ab" * 32
        orgs.met(victim, "victim", "11" * 32)
        # A peer names itself after the first 16 characters of the victim's id.
        orgs.met("cd" * 32, victim[:16], "22" * 32)
        [by_id] = orgs.find("id:" + victim[:16])
        self.assertEqual(by_id.org_id, victim)
        [by_name] = orgs.find(victim[:16])
        self.assertEqual(by_name.org_id, "cd" * 32)

    def test_one_name_for_two_nodes_is_refused_naming_both(self) -> None:
        orgs = KnownOrgs(Path(self.mktemp()))
        orgs.met("ab" * 32, "acme", "11" * 32)
        orgs.met("cd" * 32, "acme", "22" * 32)
        error = self.assertRaises(OrgSpecError, orgs.find, "acme")
        self.assertIn("id:" + "ab" * 32, str(error))
        self.assertIn("id:" + "cd" * 32, str(error))
        self.assertEqual(len(orgs.find("id:abababab")), 1)
