"""The owner's signed word that one holder may drop its replica of a blob version.

Placement (``--replicas N``) moves copies between peers; a holder drops a
replica only on a release its owner signed for that holder, blob and version, so
no other node can make it drop anything, and a release for one holder is useless
to another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .format import _MAX_U64, SIGNATURE_SIZE, FormatError, IntegrityError
from .orgkey import is_hex_id, owner_id, raw_public_key, verify_signature

_RELEASE_CONTEXT = b"dfs-twisted v3 release\x00"


@dataclass(frozen=True)
class Release:
    owner: str
    owner_key: bytes
    blob: str
    version: int
    holder: str  # the node id of the one holder it is for
    signature: bytes = field(repr=False)

    @classmethod
    def sign(cls, signer: Ed25519PrivateKey, blob: str, version: int, holder: str) -> Release:
        if not (is_hex_id(blob) and is_hex_id(holder)):
            raise ValueError("blob and holder must be 64 lowercase hex digits")
        if not 0 <= version <= _MAX_U64:
            raise ValueError("version must be an unsigned 64-bit integer")
        key = raw_public_key(signer)
        unsigned = cls(owner_id(key), key, blob, version, holder, b"")
        return cls(unsigned.owner, key, blob, version, holder, signer.sign(unsigned._message()))

    def _message(self) -> bytes:
        return (
            _RELEASE_CONTEXT
            + bytes.fromhex(self.owner)
            + bytes.fromhex(self.blob)
            + self.version.to_bytes(8, "big")
            + bytes.fromhex(self.holder)
        )

    def verify(self) -> Release:
        """Return self if the owner signed it; IntegrityError (or FormatError) if not."""
        if not all(is_hex_id(v) for v in (self.owner, self.blob, self.holder)):
            raise FormatError("release ids must be 64 lowercase hex digits")
        if not 0 <= self.version <= _MAX_U64:
            raise FormatError("release version out of range")
        if len(self.owner_key) != 32 or len(self.signature) != SIGNATURE_SIZE:
            raise FormatError("release key or signature has the wrong length")
        if owner_id(self.owner_key) != self.owner:
            raise IntegrityError("release's owner id is not its owner key's")
        verify_signature(self.owner_key, self.signature, self._message(), "release")
        return self
