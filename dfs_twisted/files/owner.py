"""This org as its file logic sees it: one value instead of four parameters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..crypto import BlobRecord, CryptoError, OrgKey, Tombstone
from ..keys import ReadKey
from ..store import BlobKey
from ..wire import ListEntry

# Versions are nanosecond times: a claimed version further ahead of this node's clock
# than this (and of every version it wrote) is not one it made.
MAX_SKEW_NS = 24 * 3600 * 10**9


@dataclass(frozen=True)
class Owner:
    """The org this node belongs to: its id, org key, signing key and grant key."""

    node_id: str
    key: OrgKey = field(repr=False)
    signer: Ed25519PrivateKey = field(repr=False)  # signs blobs and tombstones
    box: X25519PrivateKey = field(repr=False)  # opens grants made for this node

    @property
    def public_key(self) -> bytes:
        return self.signer.public_key().public_bytes_raw()

    @property
    def read_key(self) -> ReadKey:
        return ReadKey(self.node_id, "this org", self.key)

    def key_for(self, name: str, reader: ReadKey | None = None) -> BlobKey:
        """Where ``name`` lives: in this org's namespace, or ``reader``'s org's."""
        org = reader or self.read_key
        return BlobKey(org.org_id, org.key.blob_id(name))  # validates the name

    def proves(self, blob: str, claim: ListEntry, newest: int = 0) -> bool:
        """Whether a peer's claim about this org's blob carries this org's signature.

        ``newest``: the newest version this node knows it wrote; a claim far beyond
        it and beyond the clock is refused before its signature is even checked.
        """
        if claim.version > max(time.time_ns(), newest) + MAX_SKEW_NS:
            return False
        try:
            proof = bytes.fromhex(claim.proof)
            if claim.deleted:
                Tombstone(self.node_id, self.public_key, blob, claim.version, proof).verify()
            else:
                BlobRecord.from_bytes(self.node_id, blob, claim.version, proof).verify(
                    self.public_key
                )
        except (CryptoError, ValueError):
            return False
        return True

    def tombstone(self, blob: str, claim: ListEntry) -> Tombstone:
        """The tombstone a proven deletion claim carries (signed by this org, once)."""
        return Tombstone(
            self.node_id, self.public_key, blob, claim.version, bytes.fromhex(claim.proof)
        ).verify()
