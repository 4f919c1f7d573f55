"""What a peer's claim about this org's blobs must carry before this node believes it."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.crypto import OrgKey, Tombstone, owner_id
from dfs_twisted.files.owner import MAX_SKEW_NS, Owner
from dfs_twisted.wire import ListEntry

pytestmark = pytest.mark.unit

BLOB = "ee" * 32


class ProvesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.signer = Ed25519PrivateKey.generate()
        node_id = owner_id(self.signer.public_key().public_bytes_raw())
        self.owner = Owner(node_id, OrgKey.generate(), self.signer, X25519PrivateKey.generate())

    def deletion(self, version: int) -> ListEntry:
        """A claim that the blob was deleted at ``version``, with this org's real tombstone."""
        tomb = Tombstone.sign(self.signer, BLOB, version)
        return ListEntry(BLOB, version, True, tomb.signature.hex())

    def test_signed_claims_prove_and_others_do_not(self) -> None:
        now = time.time_ns()
        self.assertTrue(self.owner.proves(BLOB, self.deletion(now)))
        forged = ListEntry(BLOB, now, True, "00" * 64)
        self.assertFalse(self.owner.proves(BLOB, forged))

    def test_a_signed_claim_far_ahead_of_the_clock_is_refused(self) -> None:
        # Even this org's own signature: no version that far ahead was made by this
        # node's clock, unless it wrote one itself (``newest``).
        far = time.time_ns() + 2 * MAX_SKEW_NS
        self.assertFalse(self.owner.proves(BLOB, self.deletion(far)))
        self.assertTrue(self.owner.proves(BLOB, self.deletion(far), newest=far))
