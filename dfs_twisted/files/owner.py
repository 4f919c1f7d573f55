"""This org as its file logic sees it: one value instead of four parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..crypto import OrgKey
from ..keys import ReadKey
from ..store import BlobKey


@dataclass(frozen=True)
class Owner:
    """The org this node belongs to: its id, org key, signing key and grant key."""

    node_id: str
    key: OrgKey = field(repr=False)
    signer: Ed25519PrivateKey = field(repr=False)  # signs blobs and tombstones
    box: X25519PrivateKey = field(repr=False)  # opens grants made for this node

    @property
    def read_key(self) -> ReadKey:
        return ReadKey(self.node_id, "this org", self.key)

    def key_for(self, name: str, reader: ReadKey | None = None) -> BlobKey:
        """Where ``name`` lives: in this org's namespace, or ``reader``'s org's."""
        org = reader or self.read_key
        return BlobKey(org.org_id, org.key.blob_id(name))  # validates the name
