"""The org key and the keys derived from it, owner ids, file names, signatures."""

from __future__ import annotations

import binascii
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeGuard

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .format import (
    _HEX_DIGITS,
    _HEX_ID_LEN,
    _INFO_KEK,
    _INFO_NAME,
    _MAX_U64,
    _ORG_KEY_MAGIC,
    _WRAP_AAD,
    KEY_SIZE,
    MAX_CHUNK_SIZE,
    MAX_NAME_BYTES,
    MIN_CHUNK_SIZE,
    SIGNATURE_SIZE,
    WRAPPED_KEY_SIZE,
    FormatError,
    IntegrityError,
)


def hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(secret)


def is_hex_id(value: object) -> TypeGuard[str]:
    """True for exactly 64 lowercase hex characters: a node, owner or blob id.

    Ids end up in file paths, so nothing else (no upper case, no newline) passes.
    """
    return isinstance(value, str) and len(value) == _HEX_ID_LEN and _HEX_DIGITS.issuperset(value)


# A node meets a few owners' keys again and again (in every header and signature):
# what is derived from one is kept, instead of being worked out per blob and chunk.
@functools.lru_cache(maxsize=256)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def owner_id(public_key: bytes) -> str:
    """The id of the node owning an Ed25519 public key: SHA-256 of its SPKI, hex."""
    return _owner_id(bytes(public_key))


@functools.lru_cache(maxsize=256)
def _owner_id(public_key: bytes) -> str:
    spki = _public_key(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def raw_public_key(signer: Ed25519PrivateKey) -> bytes:
    return signer.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def verify_signature(
    public_key: bytes, signature: bytes | memoryview, message: bytes, what: str
) -> None:
    try:
        _public_key(bytes(public_key)).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"{what}: the owner's signature does not verify") from None


def verify_statement(
    what: str,
    owner: str,
    owner_key: bytes,
    ids: tuple[str, ...],
    version: int,
    signature: bytes,
    message: Callable[[], bytes],
) -> None:
    """The checks of a small statement an owner signs (a tombstone, a release): well
    formed, made with the key whose hash is ``owner``, and signed by it."""
    if not all(is_hex_id(v) for v in (owner, *ids)):
        raise FormatError(f"{what} ids must be 64 lowercase hex digits")
    if not 0 <= version <= _MAX_U64:
        raise FormatError(f"{what} version out of range")
    if len(owner_key) != 32 or len(signature) != SIGNATURE_SIZE:
        raise FormatError(f"{what} key or signature has the wrong length")
    if owner_id(owner_key) != owner:
        raise IntegrityError(f"{what}'s owner id is not its owner key's")
    verify_signature(owner_key, signature, message(), what)


def chunk_size_ok(chunk_size: int) -> bool:
    return MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE


def validate_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a storable file name."""
    if not isinstance(name, str):
        raise ValueError(f"name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("name must not be empty")
    if "\x00" in name:
        raise ValueError("name must not contain NUL characters")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("name is not valid Unicode text (lone surrogate)") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"name is {len(encoded)} bytes as UTF-8; the limit is {MAX_NAME_BYTES}")


@dataclass(frozen=True)
class OrgKey:
    """The organisation root key; everything else is derived from it."""

    root: bytes = field(repr=False)
    _name_key: bytes = field(init=False, repr=False, compare=False)
    _kek: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.root, bytes) or len(self.root) != KEY_SIZE:
            raise ValueError(f"root key must be {KEY_SIZE} bytes")
        # Derived once: blob_id is called per file and per lookup.
        object.__setattr__(self, "_name_key", hkdf(self.root, _INFO_NAME))
        object.__setattr__(self, "_kek", AESGCM(hkdf(self.root, _INFO_KEK)))

    @classmethod
    def generate(cls) -> OrgKey:
        """Return a fresh random key."""
        return cls(os.urandom(KEY_SIZE))

    def to_bytes(self) -> bytes:
        """Serialise as ``b"dfs-org-key-v1\\n" + hex + b"\\n"``."""
        return _ORG_KEY_MAGIC + self.root.hex().encode("ascii") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> OrgKey:
        """Parse the output of :meth:`to_bytes`; FormatError if malformed."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FormatError("org key must be bytes")
        data = bytes(data)
        if not data.startswith(_ORG_KEY_MAGIC):
            raise FormatError("not a dfs org key (bad magic line)")
        body = data[len(_ORG_KEY_MAGIC) :]
        # Tolerate a missing or CRLF final newline: key files get hand-edited.
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        if len(body) != 2 * KEY_SIZE or not _HEX_DIGITS.issuperset(body.decode("latin-1")):
            raise FormatError(f"org key must be {2 * KEY_SIZE} lowercase hex digits")
        return cls(binascii.unhexlify(body))

    def blob_id(self, name: str) -> str:
        """Return the deterministic, key-dependent blob id of ``name`` (64 hex)."""
        validate_name(name)
        mac = _hmac.HMAC(self._name_key, hashes.SHA256())
        mac.update(name.encode("utf-8"))
        return mac.finalize().hex()

    def _wrap(self, data_key: bytes, owner_raw: bytes, blob_raw: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._kek.encrypt(nonce, data_key, _WRAP_AAD + owner_raw + blob_raw)

    def _unwrap(self, wrapped: bytes, owner_raw: bytes, blob_raw: bytes) -> bytes:
        if len(wrapped) != WRAPPED_KEY_SIZE:
            raise FormatError("wrapped key has the wrong length")
        try:
            return self._kek.decrypt(wrapped[:12], wrapped[12:], _WRAP_AAD + owner_raw + blob_raw)
        except InvalidTag:
            raise IntegrityError(
                "cannot unwrap data key: wrong org key or tampered header"
            ) from None
