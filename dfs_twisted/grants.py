"""Per-file grants: one version of one file handed to one org, without the org key.

A grant carries that file version's data key, encrypted to the recipient node's
X25519 key (published in its HELLO) with an ephemeral key, and is signed by the
owner's node key. It opens nothing but that one version: other files have other
data keys, and an overwrite makes a new one. Only the recipient node can unwrap it,
so a grant that leaks is useless to anybody else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .crypto import FileKey, owner_id, validate_name

__all__ = ["FORMAT", "Grant", "GrantError"]

FORMAT = 1
_CONTEXT = b"dfs-twisted v2 grant\x00"
_MAX_GRANT = 16 * 1024  # bytes of JSON: a name is at most 1 KiB, the rest is fixed


class GrantError(Exception):
    """A grant that is malformed, forged, or not for this node (one-line reason)."""


def _raw(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _hex(obj: dict[str, Any], name: str, size: int) -> bytes:
    value = obj.get(name)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size or value != raw.hex():
        raise GrantError(f"grant field {name!r} is not {size} bytes of lowercase hex")
    return raw


@dataclass(frozen=True)
class Grant:
    owner: str  # node id of the owning org
    owner_key: bytes  # its Ed25519 key: owner == owner_id(owner_key)
    owner_org: str  # its human name, for messages
    recipient: str  # node id of the org it is for
    blob: str
    version: int
    name: str
    ephemeral: bytes  # X25519 public key of the sender's one-off key pair
    wrapped: bytes  # nonce || AES-GCM(data key)
    signature: bytes = field(repr=False)

    @classmethod
    def issue(
        cls,
        signer: Ed25519PrivateKey,
        owner_org: str,
        key: FileKey,
        name: str,
        recipient: str,
        recipient_box: bytes,
    ) -> Grant:
        """Hand ``key`` (one file version) to the node ``recipient``."""
        validate_name(name)
        ephemeral = X25519PrivateKey.generate()
        unsigned = cls(
            owner=key.owner,
            owner_key=_raw(signer.public_key()),
            owner_org=owner_org,
            recipient=recipient,
            blob=key.blob,
            version=key.version,
            name=name,
            ephemeral=_raw(ephemeral.public_key()),
            wrapped=b"",
            signature=b"",
        )
        if owner_id(unsigned.owner_key) != key.owner:
            raise ValueError("the signer does not own this file")
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_box))
        nonce = os.urandom(12)
        sealed = AESGCM(unsigned._wrapping_key(shared, recipient_box)).encrypt(
            nonce, key.data_key, unsigned._binding()
        )
        wrapped = cls(**{**unsigned._fields(), "wrapped": nonce + sealed})
        return cls(**{**wrapped._fields(), "signature": signer.sign(wrapped._signed())})

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _binding(self) -> bytes:
        """What the wrapped key is bound to: this owner, blob, version and recipient."""
        return (
            _CONTEXT
            + bytes.fromhex(self.owner)
            + bytes.fromhex(self.blob)
            + self.version.to_bytes(8, "big")
            + bytes.fromhex(self.recipient)
        )

    def _wrapping_key(self, shared: bytes, recipient_box: bytes) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=self._binding() + self.ephemeral + recipient_box,
        ).derive(shared)

    def _signed(self) -> bytes:
        body = {k: v for k, v in self.as_json().items() if k != "signature"}
        return _CONTEXT + json.dumps(body, sort_keys=True, ensure_ascii=False).encode()

    def as_json(self) -> dict[str, Any]:
        return {
            "dfs_grant": FORMAT,
            "owner": self.owner,
            "owner_key": self.owner_key.hex(),
            "owner_org": self.owner_org,
            "recipient": self.recipient,
            "blob": self.blob,
            "version": self.version,
            "name": self.name,
            "ephemeral": self.ephemeral.hex(),
            "wrapped": self.wrapped.hex(),
            "signature": self.signature.hex(),
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.as_json(), indent=1, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Grant:
        """Parse a grant file and check the owner's signature (GrantError if anything is off)."""
        if len(data) > _MAX_GRANT:
            raise GrantError("not a grant: too large")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise GrantError("not a grant: not JSON") from None
        if not isinstance(obj, dict) or obj.get("dfs_grant") != FORMAT:
            raise GrantError("not a dfs grant (or a format this version does not read)")
        version, name, org = obj.get("version"), obj.get("name"), obj.get("owner_org")
        if type(version) is not int or not 0 <= version < 2**64:
            raise GrantError("grant field 'version' is not a version")
        if not isinstance(name, str) or not isinstance(org, str) or len(org) > 128:
            raise GrantError("grant fields 'name' and 'owner_org' must be text")
        try:
            validate_name(name)
        except ValueError as e:
            raise GrantError(f"grant names no valid file: {e}") from None
        grant = cls(
            owner=_hex(obj, "owner", 32).hex(),
            owner_key=_hex(obj, "owner_key", 32),
            owner_org=org,
            recipient=_hex(obj, "recipient", 32).hex(),
            blob=_hex(obj, "blob", 32).hex(),
            version=version,
            name=name,
            ephemeral=_hex(obj, "ephemeral", 32),
            wrapped=bytes.fromhex(obj["wrapped"]) if isinstance(obj.get("wrapped"), str) else b"",
            signature=_hex(obj, "signature", 64),
        )
        if len(grant.wrapped) != 12 + 32 + 16:
            raise GrantError("grant field 'wrapped' has the wrong length")
        if owner_id(grant.owner_key) != grant.owner:
            raise GrantError("the grant's owner id is not its owner key's")
        try:
            Ed25519PublicKey.from_public_bytes(grant.owner_key).verify(
                grant.signature, grant._signed()
            )
        except InvalidSignature:
            raise GrantError("the grant's signature does not verify: altered or forged") from None
        return grant

    def open(self, box: X25519PrivateKey, node_id: str) -> FileKey:
        """The file key, for the node this grant was issued to."""
        if node_id != self.recipient:
            raise GrantError(
                f"this grant is for node {self.recipient[:16]}..., not this one ({node_id[:16]}...)"
            )
        mine = _raw(box.public_key())
        shared = box.exchange(X25519PublicKey.from_public_bytes(self.ephemeral))
        try:
            data_key = AESGCM(self._wrapping_key(shared, mine)).decrypt(
                self.wrapped[:12], self.wrapped[12:], self._binding()
            )
        except InvalidTag:
            raise GrantError("cannot unwrap the grant's key: it was made for another key") from None
        return FileKey(self.owner, self.blob, self.version, data_key)
