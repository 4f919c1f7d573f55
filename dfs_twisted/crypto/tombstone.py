"""The owner's signed deletion of a blob version."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .format import (
    _MAX_U64,
    _TOMB,
    _TOMB_CONTEXT,
    SIGNATURE_SIZE,
    TOMB_MAGIC,
    FormatError,
    IntegrityError,
)
from .orgkey import is_hex_id, owner_id, raw_public_key, verify_signature


@dataclass(frozen=True)
class Tombstone:
    """The owner's signed word that a blob is deleted as of ``version``.

    Holders keep it so that a replica missed by the delete, or relayed by a
    node that was away, is never resurrected.
    """

    owner: str
    owner_key: bytes
    blob: str
    version: int
    signature: bytes = field(repr=False)

    SIZE = _TOMB.size

    @classmethod
    def sign(cls, signer: Ed25519PrivateKey, blob: str, version: int) -> Tombstone:
        if not is_hex_id(blob):
            raise ValueError("blob must be 64 lowercase hex digits")
        if not 0 <= version <= _MAX_U64:
            raise ValueError("version must be an unsigned 64-bit integer")
        key = raw_public_key(signer)
        unsigned = cls(owner_id(key), key, blob, version, b"")
        return cls(unsigned.owner, key, blob, version, signer.sign(unsigned._message()))

    def _message(self) -> bytes:
        return (
            _TOMB_CONTEXT
            + bytes.fromhex(self.owner)
            + bytes.fromhex(self.blob)
            + self.version.to_bytes(8, "big")
        )

    def verify(self) -> Tombstone:
        """Return self if the owner signed it; IntegrityError (or FormatError) if not."""
        if not (is_hex_id(self.owner) and is_hex_id(self.blob)):
            raise FormatError("tombstone ids must be 64 lowercase hex digits")
        if not 0 <= self.version <= _MAX_U64:
            raise FormatError("tombstone version out of range")
        if len(self.owner_key) != 32 or len(self.signature) != SIGNATURE_SIZE:
            raise FormatError("tombstone key or signature has the wrong length")
        if owner_id(self.owner_key) != self.owner:
            raise IntegrityError("tombstone's owner id is not its owner key's")
        verify_signature(self.owner_key, self.signature, self._message(), "tombstone")
        return self

    def to_bytes(self) -> bytes:
        return _TOMB.pack(
            TOMB_MAGIC,
            bytes.fromhex(self.owner),
            self.owner_key,
            bytes.fromhex(self.blob),
            self.version,
            self.signature,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Tombstone:
        """Parse and verify the output of :meth:`to_bytes`."""
        if len(data) != _TOMB.size:
            raise FormatError("tombstone has the wrong length")
        magic, owner, key, blob, version, signature = _TOMB.unpack(data)
        if magic != TOMB_MAGIC:
            raise FormatError("not a dfs tombstone (bad magic)")
        return cls(owner.hex(), key, blob.hex(), version, signature).verify()
