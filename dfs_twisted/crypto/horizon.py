"""The owner's signed word that the tombstones of its namespace up to a version are collected.

A tombstone is kept so that a replica missed by a deletion is never brought back.
Once every node that could hold a deleted blob has confirmed its deletion, the
tombstone has done its work: the owner signs a horizon, and every node drops the
tombstones of that namespace at or below it and refuses them from then on (so a
node that has not heard yet cannot hand them back). One small statement per
namespace, whoever passes it on: only the owner's key makes one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .format import _MAX_U64, FormatError
from .orgkey import owner_id, raw_public_key, verify_statement

_HORIZON_CONTEXT = b"dfs-twisted v3 horizon\x00"
_HORIZON = struct.Struct(">32s32sQ64s")


@dataclass(frozen=True)
class Horizon:
    owner: str
    owner_key: bytes
    version: int  # every tombstone of ``owner`` at or below it is collected
    signature: bytes = field(repr=False)

    SIZE = _HORIZON.size

    @classmethod
    def sign(cls, signer: Ed25519PrivateKey, version: int) -> Horizon:
        if not 0 <= version <= _MAX_U64:
            raise ValueError("version must be an unsigned 64-bit integer")
        key = raw_public_key(signer)
        unsigned = cls(owner_id(key), key, version, b"")
        return cls(unsigned.owner, key, version, signer.sign(unsigned._message()))

    def _message(self) -> bytes:
        return _HORIZON_CONTEXT + bytes.fromhex(self.owner) + self.version.to_bytes(8, "big")

    def verify(self) -> Horizon:
        """Return self if the owner signed it; IntegrityError (or FormatError) if not."""
        verify_statement(
            "horizon", self.owner, self.owner_key, (), self.version, self.signature, self._message
        )
        return self

    def to_bytes(self) -> bytes:
        return _HORIZON.pack(
            bytes.fromhex(self.owner), self.owner_key, self.version, self.signature
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Horizon:
        """Parse and verify the output of :meth:`to_bytes`."""
        if len(data) != _HORIZON.size:
            raise FormatError("horizon has the wrong length")
        owner, key, version, signature = _HORIZON.unpack(data)
        return cls(owner.hex(), key, version, signature).verify()
