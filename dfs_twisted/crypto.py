"""Client-side encryption for dfs-twisted blobs.

Pure functions and classes over bytes: no disk layout, no network.

A blob (format 3) is ``header || chunk_0 || ... || chunk_n``. Each file version
gets a fresh random data key, wrapped under the organisation key-encryption key,
and the header names the owner's Ed25519 public key, whose SPKI hash is the owner
id. Each chunk is AES-256-GCM ciphertext (the STREAM construction: the nonce is a
per-file prefix, the chunk index and a "last chunk" flag; the associated data is
the BLAKE3 hash of the header) followed by the owner's signature over the chunk's
BLAKE3 hash, its index, whether it is the last, the plaintext size up to its end,
and the owner, blob, version and header hash.

So every chunk can be checked on its own, by anyone and without the org key,
before its plaintext is released or it is stored (a holder, a reader whose local
copy is damaged and continues from a peer at that chunk, a storage audit); a
truncated blob lacks a signed last chunk; and the last chunk's signature is the
blob's `BlobRecord`: a small statement of its version, size and content that peers
present in listings and that proves a claimed version. Deletions are signed
tombstones. One hash pass per byte: the STREAM construction already authenticates
every byte, its order and the end, so there is no separate plaintext hash.

Blobs of format 2 (a SHA-256 seal over the whole blob and an encrypted trailer)
are still read: see `legacy`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac as _stdlib_hmac
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blake3 import blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "CHUNK_SIZE",
    "FIXED_HEADER_SIZE",
    "FORMAT_VERSION",
    "MAX_CHUNK_SIZE",
    "MAX_NAME_BYTES",
    "MAX_SEALED_META",
    "MIN_CHUNK_SIZE",
    "RECORD_SIZE",
    "SIGNATURE_SIZE",
    "TAG",
    "BlobHeader",
    "BlobRecord",
    "CryptoError",
    "Decryptor",
    "Encryptor",
    "FileKey",
    "FormatError",
    "IntegrityError",
    "Metadata",
    "OrgKey",
    "SealCheck",
    "Tombstone",
    "audit_digest",
    "check_chunk",
    "chunk_at",
    "ciphertext_size",
    "file_key",
    "header_length",
    "last_chunk",
    "open_metadata",
    "owner_id",
    "parse_header",
    "plaintext_size",
    "stored_record",
    "validate_name",
]

CHUNK_SIZE: int = 1 << 20
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
MAX_NAME_BYTES = 1024
FORMAT_VERSION = 3
LEGACY_FORMAT = 2
TAG = 16
KEY_SIZE = 32
NONCE_PREFIX_SIZE = 7
WRAPPED_KEY_SIZE = 12 + KEY_SIZE + TAG
SIGNATURE_SIZE = 64
DIGEST_SIZE = 32
# JSON escapes a control character as six bytes ("\u0001"), so a maximal
# 1024-byte name can take ~6 KiB once encoded; 8 KiB leaves room for the rest.
MAX_SEALED_META = 8192

MAGIC = b"DFSB"
# magic, format, chunk size, owner id, owner public key, blob id, version,
# nonce prefix, wrapped data key, sealed metadata length.
_FIXED = struct.Struct(">4sBI32s32s32sQ7s60sH")
FIXED_HEADER_SIZE: int = _FIXED.size
# The metadata AAD is everything before the u16 sealed_meta length field.
_META_AAD_END = FIXED_HEADER_SIZE - 2

_CHUNK_CONTEXT = b"dfs-twisted v3 chunk\x00"
# owner, blob, version, header hash, chunk index, last, plaintext size to here, chunk hash.
_CHUNK_STATEMENT = struct.Struct(">32s32sQ32sIBQ32s")
# A record as it travels: size, header hash, last chunk index and hash, signature.
_RECORD = struct.Struct(">Q32sI32s64s")
RECORD_SIZE: int = _RECORD.size
_TOMB_CONTEXT = b"dfs-twisted v2 tombstone\x00"
_TOMB = struct.Struct(">4s32s32s32sQ64s")
TOMB_MAGIC = b"DFST"

_NONCE = struct.Struct(">7sIB")
MAX_CHUNK_INDEX = 0xFFFFFFFE
_FLAG_MIDDLE = 0
_FLAG_LAST = 1

_MAX_U64 = (1 << 64) - 1
_HEX_ID_LEN = 64

_ORG_KEY_MAGIC = b"dfs-org-key-v1\n"
_INFO_NAME = b"dfs-twisted v1 name"
_INFO_KEK = b"dfs-twisted v1 kek"
_INFO_META = b"dfs-twisted v1 meta"
_WRAP_AAD = b"dfs-wrap"
_ZERO_NONCE = bytes(12)

_HEX_DIGITS = frozenset("0123456789abcdef")


if TYPE_CHECKING:
    from .legacy import LegacyDecryptor, LegacySealCheck


class CryptoError(Exception):
    """Base class for errors raised by this module."""


class FormatError(CryptoError):
    """A header, key file or blob is structurally malformed."""


class IntegrityError(CryptoError):
    """Authentication failed: tampered, truncated, reordered or wrong key."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(secret)


def _is_hex_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == _HEX_ID_LEN and _HEX_DIGITS.issuperset(value)


def owner_id(public_key: bytes) -> str:
    """The id of the node owning an Ed25519 public key: SHA-256 of its SPKI, hex."""
    spki = Ed25519PublicKey.from_public_bytes(public_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _raw_public(signer: Ed25519PrivateKey) -> bytes:
    return signer.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _verify(public_key: bytes, signature: bytes | memoryview, message: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IntegrityError(f"{what}: the owner's signature does not verify") from None


def _check_chunk_size(chunk_size: int) -> bool:
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
        object.__setattr__(self, "_name_key", _hkdf(self.root, _INFO_NAME))
        object.__setattr__(self, "_kek", AESGCM(_hkdf(self.root, _INFO_KEK)))

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


@dataclass(frozen=True)
class Metadata:
    """Encrypted per-file metadata."""

    name: str
    mtime: int


@dataclass(frozen=True)
class BlobHeader:
    """A parsed blob header; ``raw`` is the exact header bytes."""

    owner: str
    owner_key: bytes  # Ed25519 public key; owner == owner_id(owner_key)
    blob: str
    version: int
    chunk_size: int
    nonce_prefix: bytes
    wrapped_key: bytes
    sealed_meta: bytes
    raw: bytes
    format: int = FORMAT_VERSION
    _digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        digest = (
            hashlib.sha256(self.raw).digest()
            if self.format == LEGACY_FORMAT
            else blake3(self.raw).digest()
        )
        object.__setattr__(self, "_digest", digest)

    @property
    def digest(self) -> bytes:
        """The hash of the raw header: the AAD of every chunk, and signed with each."""
        return self._digest

    @property
    def span(self) -> int:
        """Bytes of a full chunk in the blob: ciphertext, tag and signature."""
        return self.chunk_size + TAG + SIGNATURE_SIZE

    def chunk_offset(self, index: int) -> int:
        """Where chunk ``index`` starts in the blob."""
        return len(self.raw) + index * self.span


def header_length(prefix: bytes) -> int:
    """Total header length, from at least FIXED_HEADER_SIZE leading blob bytes."""
    if len(prefix) < FIXED_HEADER_SIZE:
        raise FormatError(f"need {FIXED_HEADER_SIZE} bytes to read the header length")
    magic, fmt, chunk_size, _o, _k, _b, _v, _p, _w, meta_len = _FIXED.unpack_from(prefix)
    if magic != MAGIC:
        raise FormatError("not a dfs blob (bad magic)")
    if fmt not in (FORMAT_VERSION, LEGACY_FORMAT):
        raise FormatError(f"unsupported blob format version {fmt}")
    if not _check_chunk_size(chunk_size):
        raise FormatError(f"chunk size {chunk_size} out of range")
    if not TAG <= meta_len <= MAX_SEALED_META:
        raise FormatError(f"sealed metadata length {meta_len} out of range")
    return FIXED_HEADER_SIZE + int(meta_len)


def parse_header(data: bytes) -> BlobHeader:
    """Parse the header at the start of ``data`` (trailing bytes are ignored)."""
    total = header_length(data)
    if len(data) < total:
        raise FormatError("blob too short for its header")
    raw = bytes(data[:total])
    _m, fmt, chunk_size, owner, owner_key, blob, version, prefix, wrapped, _l = _FIXED.unpack_from(
        raw
    )
    try:
        keyed = owner_id(owner_key)
    except ValueError:
        raise FormatError("header holds an invalid owner key") from None
    if keyed != owner.hex():
        raise FormatError("header's owner id is not its owner key's")
    return BlobHeader(
        owner=owner.hex(),
        owner_key=owner_key,
        blob=blob.hex(),
        version=version,
        chunk_size=chunk_size,
        nonce_prefix=prefix,
        wrapped_key=wrapped,
        sealed_meta=raw[FIXED_HEADER_SIZE:],
        raw=raw,
        format=fmt,
    )


@dataclass(frozen=True)
class FileKey:
    """One file version's data key: it reads that version of that file and nothing else.

    What a per-file grant hands over instead of the org key.
    """

    owner: str
    blob: str
    version: int
    data_key: bytes = field(repr=False)


def file_key(key: OrgKey, header: BlobHeader) -> FileKey:
    """The data key of the blob whose header this is (IntegrityError: not this org's)."""
    return FileKey(header.owner, header.blob, header.version, _open_header(key, header)[0])


def _open_header(key: OrgKey | FileKey, header: BlobHeader) -> tuple[bytes, Metadata]:
    owner_raw = bytes.fromhex(header.owner)
    blob_raw = bytes.fromhex(header.blob)
    if isinstance(key, FileKey):
        if (key.owner, key.blob, key.version) != (header.owner, header.blob, header.version):
            raise IntegrityError("the file key is for another file or version")
        data_key = key.data_key
    else:
        data_key = key._unwrap(header.wrapped_key, owner_raw, blob_raw)
    try:
        plain = AESGCM(_hkdf(data_key, _INFO_META)).decrypt(
            _ZERO_NONCE, header.sealed_meta, header.raw[:_META_AAD_END]
        )
    except InvalidTag:
        raise IntegrityError("metadata failed authentication") from None
    try:
        obj = json.loads(plain)
    except ValueError:
        raise FormatError("metadata is not valid JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"name", "mtime"}:
        raise FormatError("metadata must be an object with name and mtime")
    name, mtime = obj["name"], obj["mtime"]
    if not isinstance(name, str) or type(mtime) is not int:
        raise FormatError("metadata has wrong field types")
    try:
        validate_name(name)
    except ValueError as exc:
        raise FormatError(f"metadata name invalid: {exc}") from None
    # The blob id must be the name's MAC; otherwise an insider could file a
    # blob under one name while its metadata claims another. (A file key has
    # no name key: the owner's signature over the grant binds name and blob.)
    if isinstance(key, OrgKey) and not _stdlib_hmac.compare_digest(key.blob_id(name), header.blob):
        raise IntegrityError("blob id does not match the encrypted file name")
    return data_key, Metadata(name=name, mtime=mtime)


def open_metadata(key: OrgKey | FileKey, header: BlobHeader) -> Metadata:
    """Unwrap the data key and decrypt the metadata; IntegrityError on failure."""
    return _open_header(key, header)[1]


def ciphertext_size(header_len: int, chunk_size: int, plain_size: int) -> int:
    """Total blob length for ``plain_size`` plaintext bytes."""
    if plain_size < 0:
        raise ValueError("plain_size must be non-negative")
    full, rest = divmod(plain_size, chunk_size)
    # Full chunks are emitted eagerly, so the last chunk holds 0..chunk_size-1 bytes.
    overhead = TAG + SIGNATURE_SIZE
    return header_len + full * (chunk_size + overhead) + rest + overhead


def plaintext_size(header: BlobHeader, blob_length: int) -> int:
    """Plaintext size implied by a total blob length; FormatError if impossible."""
    if header.format == LEGACY_FORMAT:
        from .legacy import plaintext_size as legacy_size

        return legacy_size(header, blob_length)
    body = blob_length - len(header.raw)
    full, rest = divmod(body, header.span)
    if body < 0 or rest < TAG + SIGNATURE_SIZE:
        raise FormatError("blob length is not consistent with any plaintext size")
    if full > MAX_CHUNK_INDEX:
        raise FormatError("blob has too many chunks")
    return full * header.chunk_size + rest - TAG - SIGNATURE_SIZE


def last_chunk(header: BlobHeader, blob_length: int) -> tuple[int, int]:
    """Where a blob's last chunk starts, and its index (FormatError: impossible length)."""
    index = plaintext_size(header, blob_length) // header.chunk_size
    return header.chunk_offset(index), index


def stored_record(header: BlobHeader, blob_length: int, chunk: bytes) -> BlobRecord:
    """The record of a stored blob, from its last chunk (ciphertext and signature).

    Not verified: this is for a blob that was checked when it was stored.
    """
    _, index = last_chunk(header, blob_length)
    if len(chunk) < TAG + SIGNATURE_SIZE:
        raise FormatError("last chunk too short")
    return BlobRecord(
        header.owner,
        header.blob,
        header.version,
        plaintext_size(header, blob_length),
        header.digest,
        index,
        blake3(chunk[:-SIGNATURE_SIZE]).digest(),
        bytes(chunk[-SIGNATURE_SIZE:]),
    )


def chunk_at(header: BlobHeader, blob_length: int, index: int) -> tuple[int, int, bool]:
    """Where chunk ``index`` of a blob lies: (offset, length, whether it is the last)."""
    offset, last_index = last_chunk(header, blob_length)
    if not 0 <= index <= last_index:
        raise FormatError(f"no chunk {index}: the blob has {last_index + 1}")
    if index == last_index:
        return offset, blob_length - offset, True
    return header.chunk_offset(index), header.span, False


def check_chunk(header: BlobHeader, blob_length: int, index: int, chunk: bytes) -> None:
    """Verify one stored chunk (ciphertext and signature) against the owner's key."""
    _, length, last = chunk_at(header, blob_length, index)
    if len(chunk) != length:
        raise IntegrityError(f"chunk {index} is cut short")
    sealed = chunk[:-SIGNATURE_SIZE]
    end = plaintext_size(header, blob_length) if last else (index + 1) * header.chunk_size
    message = _statement(header, index, last, end, blake3(sealed).digest())
    _verify(header.owner_key, chunk[-SIGNATURE_SIZE:], message, f"chunk {index}")


def audit_digest(nonce: bytes, chunk: bytes | memoryview) -> bytes:
    """What a holder answers to a storage audit of one chunk: a hash keyed by a fresh
    nonce, so it can only be computed from the chunk's bytes, not remembered."""
    return blake3(chunk, key=nonce).digest()


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return _NONCE.pack(prefix, index, _FLAG_LAST if last else _FLAG_MIDDLE)


def _statement(header: BlobHeader, index: int, last: bool, size: int, chunk_digest: bytes) -> bytes:
    return _CHUNK_CONTEXT + _CHUNK_STATEMENT.pack(
        bytes.fromhex(header.owner),
        bytes.fromhex(header.blob),
        header.version,
        header.digest,
        index,
        int(last),
        size,
        chunk_digest,
    )


@dataclass(frozen=True)
class BlobRecord:
    """The owner's signed word that a blob version exists: its size and content.

    It is the signature of the blob's last chunk, which covers the owner, blob,
    version, header hash, chunk count and plaintext size: a claim about a version
    (a listing, a HEAD) counts only when its record verifies under the owner's key.
    """

    owner: str
    blob: str
    version: int
    size: int  # plaintext bytes
    header_digest: bytes
    index: int  # of the last chunk
    chunk_digest: bytes
    signature: bytes = field(repr=False)

    def to_bytes(self) -> bytes:
        """The part that travels beside a (owner, blob, version): RECORD_SIZE bytes."""
        return _RECORD.pack(
            self.size, self.header_digest, self.index, self.chunk_digest, self.signature
        )

    @classmethod
    def from_bytes(cls, owner: str, blob: str, version: int, data: bytes) -> BlobRecord:
        if len(data) != RECORD_SIZE:
            raise FormatError("a blob record has the wrong length")
        size, header_digest, index, chunk_digest, signature = _RECORD.unpack(data)
        return cls(owner, blob, version, size, header_digest, index, chunk_digest, signature)

    def _message(self) -> bytes:
        return _CHUNK_CONTEXT + _CHUNK_STATEMENT.pack(
            bytes.fromhex(self.owner),
            bytes.fromhex(self.blob),
            self.version,
            self.header_digest,
            self.index,
            1,
            self.size,
            self.chunk_digest,
        )

    def verify(self, owner_key: bytes) -> BlobRecord:
        """Return self if the owner (whose public key this is) signed it."""
        if not (_is_hex_id(self.owner) and _is_hex_id(self.blob)):
            raise FormatError("record ids must be 64 lowercase hex digits")
        if owner_id(owner_key) != self.owner:
            raise IntegrityError("the key given is not the record's owner's")
        _verify(owner_key, self.signature, self._message(), f"record of {self.blob[:16]}")
        return self


class _HeaderReader:
    """Collects a blob's first bytes until its header is in."""

    def __init__(self, owner: str | None, blob: str | None) -> None:
        self._want_owner = owner
        self._want_blob = blob
        self._head = bytearray()
        self.header: BlobHeader | None = None

    def feed(self, view: memoryview) -> memoryview:
        """Take bytes; once the header is complete, return what follows it."""
        self._head += view
        if len(self._head) < FIXED_HEADER_SIZE:
            return memoryview(b"")
        total = header_length(bytes(self._head[:FIXED_HEADER_SIZE]))
        if len(self._head) < total:
            return memoryview(b"")
        header = parse_header(bytes(self._head))
        if self._want_owner is not None and header.owner != self._want_owner:
            raise IntegrityError("blob header names a different owner")
        if self._want_blob is not None and header.blob != self._want_blob:
            raise IntegrityError("blob header names a different blob id")
        self.header = header
        rest = memoryview(bytes(self._head[total:]))
        self._head = bytearray()
        return rest


class SealCheck:
    """Checks that a blob is complete and signed by its owner, with no org key.

    Feed it the blob's bytes as they arrive, cut anywhere: each chunk is checked
    against the owner's signature as soon as it is in (IntegrityError at once for
    a bad one), without copying it. ``finish`` checks the end and returns the
    header; ``record`` is then the blob's `BlobRecord`. This is what a node holding
    another org's replica can verify.
    """

    def __init__(self, *, owner: str | None = None, blob: str | None = None) -> None:
        self._reader = _HeaderReader(owner, blob)
        self.header: BlobHeader | None = None
        self.record: BlobRecord | None = None
        self.length = 0
        self._legacy: LegacySealCheck | None = None
        self._hash = blake3()
        self._hashed = 0  # ciphertext bytes of the current chunk hashed so far
        # Bytes not hashed yet: they may be the last chunk's signature, if the blob ends here.
        self._tail = bytearray()
        self._signature: bytearray | None = None  # a middle chunk's, arriving
        self._index = 0
        self._plain = 0  # plaintext bytes before the current chunk

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.length += len(view)
        if self.header is None:
            view = self._reader.feed(view)
            header = self.header = self._reader.header
            if header is None:
                return
            if header.format == LEGACY_FORMAT:
                from .legacy import LegacySealCheck as _LegacySealCheck

                self._legacy = _LegacySealCheck(header)
        if self._legacy is not None:
            self._legacy.feed(view)
            return
        self._absorb(view)

    def _absorb(self, view: memoryview) -> None:
        header = self.header
        assert header is not None
        full = header.chunk_size + TAG
        while view:
            if self._signature is not None:
                take = min(SIGNATURE_SIZE - len(self._signature), len(view))
                self._signature += view[:take]
                view = view[take:]
                if len(self._signature) == SIGNATURE_SIZE:
                    self._end_chunk(bytes(self._signature), last=False)
                continue
            need = full - self._hashed
            if len(self._tail) + len(view) >= need + SIGNATURE_SIZE:
                # A chunk this long is never the last: its ciphertext ends here, and
                # its signature follows.
                if need <= len(self._tail):
                    self._hash.update(self._tail[:need])
                    self._signature = bytearray(self._tail[need:])
                else:
                    self._hash.update(self._tail)
                    self._hash.update(view[: need - len(self._tail)])
                    view = view[need - len(self._tail) :]
                    self._signature = bytearray()
                self._tail = bytearray()
                self._hashed = full
                continue
            # Hash all but the last SIGNATURE_SIZE bytes: the blob may end here.
            keep = len(self._tail) + len(view) - SIGNATURE_SIZE
            if keep <= 0:
                self._tail += view
            elif keep <= len(self._tail):
                self._hash.update(self._tail[:keep])
                self._hashed += keep
                self._tail = self._tail[keep:] + view
            else:
                self._hash.update(self._tail)
                self._hash.update(view[: keep - len(self._tail)])
                self._hashed += keep
                self._tail = bytearray(view[keep - len(self._tail) :])
            view = memoryview(b"")

    def _end_chunk(self, signature: bytes, last: bool) -> None:
        header = self.header
        assert header is not None
        if self._index > MAX_CHUNK_INDEX:
            raise IntegrityError("too many chunks")
        self._plain += self._hashed - TAG
        digest = self._hash.digest()
        message = _statement(header, self._index, last, self._plain, digest)
        _verify(header.owner_key, signature, message, f"chunk {self._index}")
        if last:
            self.record = BlobRecord(
                header.owner,
                header.blob,
                header.version,
                self._plain,
                header.digest,
                self._index,
                digest,
                signature,
            )
        self._index += 1
        self._hash = blake3()
        self._hashed = 0
        self._signature = None

    def finish(self) -> BlobHeader:
        """Check that the blob ended with its signed last chunk; return its header."""
        header = self.header
        if header is None:
            raise IntegrityError("blob truncated inside its header")
        if self._legacy is not None:
            self._legacy.finish()
            return header
        if self._signature is not None or len(self._tail) != SIGNATURE_SIZE:
            raise IntegrityError("blob truncated: no signed last chunk")
        if self._hashed < TAG:
            raise IntegrityError("blob truncated: last chunk too short")
        self._end_chunk(bytes(self._tail), last=True)
        self._tail = bytearray()
        return header


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
        if not _is_hex_id(blob):
            raise ValueError("blob must be 64 lowercase hex digits")
        if not 0 <= version <= _MAX_U64:
            raise ValueError("version must be an unsigned 64-bit integer")
        key = _raw_public(signer)
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
        if not (_is_hex_id(self.owner) and _is_hex_id(self.blob)):
            raise FormatError("tombstone ids must be 64 lowercase hex digits")
        if not 0 <= self.version <= _MAX_U64:
            raise FormatError("tombstone version out of range")
        if len(self.owner_key) != 32 or len(self.signature) != SIGNATURE_SIZE:
            raise FormatError("tombstone key or signature has the wrong length")
        if owner_id(self.owner_key) != self.owner:
            raise IntegrityError("tombstone's owner id is not its owner key's")
        _verify(self.owner_key, self.signature, self._message(), "tombstone")
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


class Encryptor:
    """Streaming encryption of one file version into a blob."""

    header: bytes
    blob: str
    size: int

    def __init__(
        self,
        key: OrgKey,
        signer: Ed25519PrivateKey,
        name: str,
        version: int,
        *,
        mtime: int | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        owner_key = _raw_public(signer)
        self.owner = owner = owner_id(owner_key)
        if not isinstance(version, int) or not 0 <= version <= _MAX_U64:
            raise ValueError("version must be an unsigned 64-bit integer")
        if not isinstance(chunk_size, int) or not _check_chunk_size(chunk_size):
            raise ValueError(f"chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
        if mtime is None:
            mtime = int(time.time())
        self.blob = key.blob_id(name)  # validates the name
        self._chunk_size = chunk_size
        data_key = os.urandom(KEY_SIZE)
        prefix = os.urandom(NONCE_PREFIX_SIZE)
        owner_raw = bytes.fromhex(owner)
        blob_raw = bytes.fromhex(self.blob)
        wrapped = key._wrap(data_key, owner_raw, blob_raw)
        meta_json = json.dumps(
            {"name": name, "mtime": mtime}, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
        fixed = _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            chunk_size,
            owner_raw,
            owner_key,
            blob_raw,
            version,
            prefix,
            wrapped,
            len(meta_json) + TAG,
        )
        # Zero nonce is safe: the meta key is derived from a fresh per-file data key.
        sealed = AESGCM(_hkdf(data_key, _INFO_META)).encrypt(
            _ZERO_NONCE, meta_json, fixed[:_META_AAD_END]
        )
        if len(sealed) > MAX_SEALED_META:
            raise ValueError("metadata too large")
        self.header = fixed + sealed
        self._parsed = parse_header(self.header)
        self._aead = AESGCM(data_key)
        self._signer = signer
        # Fixed-size staging buffer filled in place: no reallocation per chunk.
        self._buf = bytearray(chunk_size)
        self._fill = 0
        self._index = 0
        self._done = False
        self.size = 0
        self.record: BlobRecord | None = None

    def _seal(self, data: bytes | bytearray | memoryview, last: bool) -> list[bytes]:
        if self._index > MAX_CHUNK_INDEX:
            raise ValueError("file too large: chunk index space exhausted")
        header = self._parsed
        sealed = self._aead.encrypt(
            _nonce(header.nonce_prefix, self._index, last), data, header.digest
        )
        digest = blake3(sealed).digest()
        ended = self.size if last else (self._index + 1) * self._chunk_size
        signature = self._signer.sign(_statement(header, self._index, last, ended, digest))
        if last:
            self.record = BlobRecord(
                header.owner,
                header.blob,
                header.version,
                self.size,
                header.digest,
                self._index,
                digest,
                signature,
            )
        self._index += 1
        return [sealed, signature]

    def update(self, data: bytes | memoryview) -> list[bytes]:
        """Feed plaintext; return the pieces of the chunks it completes (ciphertext,
        then its signature, for each)."""
        if self._done:
            raise RuntimeError("Encryptor already finalized")
        view = memoryview(data).cast("B")
        self.size += len(view)
        cs = self._chunk_size
        out: list[bytes] = []
        if self._fill:
            take = min(cs - self._fill, len(view))
            self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            if self._fill < cs:
                return out
            out += self._seal(self._buf, last=False)
            self._fill = 0
            view = view[take:]
        # Seal whole chunks straight from the caller's buffer: no copy.
        full = len(view) // cs
        for i in range(full):
            out += self._seal(view[i * cs : (i + 1) * cs], last=False)
        rest = len(view) - full * cs
        self._buf[:rest] = view[full * cs :]
        self._fill = rest
        return out

    def finalize(self) -> bytes:
        """Return the last chunk (always present) and its signature."""
        if self._done:
            raise RuntimeError("Encryptor already finalized")
        self._done = True
        with memoryview(self._buf) as mv, mv[: self._fill] as pending:
            sealed, signature = self._seal(pending, last=True)
        self._buf = bytearray()
        return sealed + signature


class Decryptor:
    """Streaming, authenticating decryption of one blob.

    ``feed`` releases a chunk's plaintext only once that chunk passed both the
    owner's signature and authentication; the end of the stream is checked by
    ``finish``: treat the file as complete only once it has returned.

    After a bad chunk the stream fails (IntegrityError); ``resume`` lets it go on
    with the same chunk from another source, at byte ``offset`` of the blob.
    """

    header: BlobHeader | None
    metadata: Metadata | None

    def __init__(
        self,
        key: OrgKey | FileKey,
        *,
        owner: str | None = None,
        blob: str | None = None,
        version: int | None = None,
        verified: Callable[[memoryview], None] | None = None,
    ) -> None:
        """``verified``: called with the bytes of each chunk (ciphertext and signature)
        once it passed, before its plaintext is released: what a copy is made of."""
        self._key = key
        self._want_version = version
        self._verified = verified
        self.header = None
        self.metadata = None
        self.record: BlobRecord | None = None
        self._aead: AESGCM | None = None
        self._reader = _HeaderReader(owner, blob)
        self._legacy: LegacyDecryptor | None = None
        self._buf = bytearray()
        self._index = 0
        self._released = 0
        self._error: CryptoError | None = None
        self._done = False

    @property
    def offset(self) -> int:
        """Byte offset in the blob of the first chunk not yet released."""
        assert self.header is not None
        return self.header.chunk_offset(self._index)

    def _check_usable(self) -> None:
        if self._error is not None:
            # A failed stream stays failed: never resume after a bad chunk by accident.
            raise type(self._error)(f"stream already failed: {self._error}")
        if self._done:
            raise RuntimeError("Decryptor already finished")

    def resume(self) -> int:
        """Forget a failure and the partial chunk; the caller feeds from ``offset`` on."""
        if self._aead is None or self._legacy is not None:
            raise RuntimeError("only a started stream of the current format can resume")
        self._error = None
        self._buf = bytearray()
        return self.offset

    def feed(self, data: bytes | memoryview) -> bytes:
        """Consume blob bytes; return newly authenticated plaintext."""
        self._check_usable()
        try:
            return self._feed(memoryview(data).cast("B"))
        except CryptoError as exc:
            self._error = exc
            raise

    def _feed(self, view: memoryview) -> bytes:
        if self._legacy is not None:
            return self._legacy.feed(view)
        if self._aead is None:
            view = self._reader.feed(view)
            header = self._reader.header
            if header is None:
                return b""
            if self._want_version is not None and header.version != self._want_version:
                raise IntegrityError(
                    f"blob is version {header.version}, not the {self._want_version} asked for"
                )
            self.header = header
            data_key, self.metadata = _open_header(self._key, header)
            self._aead = AESGCM(data_key)
            if header.format == LEGACY_FORMAT:
                from .legacy import LegacyDecryptor as _LegacyDecryptor

                self._legacy = _LegacyDecryptor(header, data_key)
                return self._legacy.feed(view)
            self._buf += view
            return self._drain_buffer()
        if not self._buf:
            # Fast path: open whole chunks straight from the caller's buffer.
            consumed, out = self._process(view)
            self._buf += view[consumed:]
            return out
        self._buf += view
        return self._drain_buffer()

    def _drain_buffer(self) -> bytes:
        with memoryview(self._buf) as mv:
            consumed, out = self._process(mv)
        # bytearray deletes from the front in O(1) amortised.
        del self._buf[:consumed]
        return out

    def _open_chunk(self, chunk: memoryview, last: bool) -> bytes:
        header = self.header
        assert self._aead is not None and header is not None
        if self._index > MAX_CHUNK_INDEX:
            raise IntegrityError("too many chunks")
        sealed = chunk[:-SIGNATURE_SIZE]
        digest = blake3(sealed).digest()
        size = self._released + len(sealed) - TAG
        message = _statement(header, self._index, last, size, digest)
        # The owner's signature first: only the owner's bytes are ever decrypted.
        _verify(header.owner_key, chunk[-SIGNATURE_SIZE:], message, f"chunk {self._index}")
        try:
            plain = self._aead.decrypt(
                _nonce(header.nonce_prefix, self._index, last), sealed, header.digest
            )
        except InvalidTag:
            raise IntegrityError(f"chunk {self._index} failed authentication") from None
        if self._verified is not None:
            self._verified(chunk)
        if last:
            self.record = BlobRecord(
                header.owner,
                header.blob,
                header.version,
                size,
                header.digest,
                self._index,
                digest,
                bytes(chunk[-SIGNATURE_SIZE:]),
            )
        self._index += 1
        self._released += len(plain)
        return plain

    def _process(self, mv: memoryview) -> tuple[int, bytes]:
        assert self.header is not None
        span = self.header.span
        pos = 0
        pieces: list[bytes] = []
        # A chunk of full length is never the last: it can be opened at once.
        while len(mv) - pos >= span:
            with mv[pos : pos + span] as piece:
                pieces.append(self._open_chunk(piece, last=False))
            pos += span
        if not pieces:
            return pos, b""
        if len(pieces) == 1:
            return pos, pieces[0]
        return pos, b"".join(pieces)

    def finish(self) -> tuple[bytes, BlobRecord | None]:
        """Authenticate the end of the stream; return (last plaintext, the blob's record)."""
        self._check_usable()
        try:
            result = self._finish()
        except CryptoError as exc:
            self._error = exc
            raise
        self._done = True
        return result

    def _finish(self) -> tuple[bytes, BlobRecord | None]:
        if self._legacy is not None:
            return self._legacy.finish(), None
        if self._aead is None or self.header is None:
            raise IntegrityError("blob truncated inside its header")
        # The encryptor never writes a full-size last chunk; accepting one would
        # give two encodings of the same file.
        if not TAG + SIGNATURE_SIZE <= len(self._buf) < self.header.span:
            raise IntegrityError("blob truncated or has trailing garbage")
        with memoryview(self._buf) as mv:
            last = self._open_chunk(mv, last=True)
        self._buf = bytearray()
        return last, self.record
