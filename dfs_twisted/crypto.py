"""Client-side encryption for dfs-twisted blobs.

Pure functions and classes over bytes: no disk layout, no network.

A blob is ``header || chunk_0 || ... || chunk_n || trailer`` (the STREAM
construction).  Each file gets a fresh random data key, wrapped under the
organisation key-encryption key; chunks are AES-GCM sealed with a nonce made of
a per-file prefix, the chunk index and a "last chunk" flag, and authenticate the
SHA-256 digest of the header.  The trailer carries the plaintext size and
SHA-256 so that truncation at a chunk boundary is detected, and ends with the
owner's Ed25519 signature over the SHA-256 of every byte before it.  The header
names the owner's public key, whose SPKI hash is the owner id: any node can
check that a blob is complete and the owner's own (SealCheck) without being able
to read it.  Deletions are signed the same way (Tombstone).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac as _stdlib_hmac
import json
import os
import struct
import time
from dataclasses import dataclass, field

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
    "TAG",
    "TRAILER_SIZE",
    "BlobHeader",
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
    "Trailer",
    "ciphertext_size",
    "file_key",
    "header_length",
    "open_metadata",
    "open_trailer",
    "owner_id",
    "parse_header",
    "plaintext_size",
    "validate_name",
]

CHUNK_SIZE: int = 1 << 20
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
MAX_NAME_BYTES = 1024
FORMAT_VERSION = 2
TAG = 16
KEY_SIZE = 32
NONCE_PREFIX_SIZE = 7
WRAPPED_KEY_SIZE = 12 + KEY_SIZE + TAG
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

_TRAILER_PLAIN = struct.Struct(">Q32s")
SIGNATURE_SIZE = 64
_SEALED_TRAILER_SIZE = _TRAILER_PLAIN.size + TAG
# The sealed size and hash, then the owner's signature over all that precedes it.
TRAILER_SIZE: int = _SEALED_TRAILER_SIZE + SIGNATURE_SIZE
_SEAL_CONTEXT = b"dfs-twisted v2 blob seal\x00"
_TOMB_CONTEXT = b"dfs-twisted v2 tombstone\x00"
_TOMB = struct.Struct(">4s32s32s32sQ64s")
TOMB_MAGIC = b"DFST"

_NONCE = struct.Struct(">7sIB")
# Index 0xFFFFFFFF is reserved for the trailer nonce.
MAX_CHUNK_INDEX = 0xFFFFFFFE
_TRAILER_INDEX = 0xFFFFFFFF
_FLAG_MIDDLE = 0
_FLAG_LAST = 1
_FLAG_TRAILER = 2

_MAX_U64 = (1 << 64) - 1
_HEX_ID_LEN = 64

_ORG_KEY_MAGIC = b"dfs-org-key-v1\n"
_INFO_NAME = b"dfs-twisted v1 name"
_INFO_KEK = b"dfs-twisted v1 kek"
_INFO_META = b"dfs-twisted v1 meta"
_WRAP_AAD = b"dfs-wrap"
_ZERO_NONCE = bytes(12)

_HEX_DIGITS = frozenset("0123456789abcdef")


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


def _verify(public_key: bytes, signature: bytes, message: bytes, what: str) -> None:
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
class Trailer:
    """Authenticated end-of-stream record."""

    size: int
    sha256: bytes


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
    _digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_digest", hashlib.sha256(self.raw).digest())

    @property
    def digest(self) -> bytes:
        """SHA-256 of the raw header (the AAD of every chunk and the trailer)."""
        return self._digest


def header_length(prefix: bytes) -> int:
    """Total header length, from at least FIXED_HEADER_SIZE leading blob bytes."""
    if len(prefix) < FIXED_HEADER_SIZE:
        raise FormatError(f"need {FIXED_HEADER_SIZE} bytes to read the header length")
    magic, fmt, chunk_size, _o, _k, _b, _v, _p, _w, meta_len = _FIXED.unpack_from(prefix)
    if magic != MAGIC:
        raise FormatError("not a dfs blob (bad magic)")
    if fmt != FORMAT_VERSION:
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
    _m, _f, chunk_size, owner, owner_key, blob, version, prefix, wrapped, _l = _FIXED.unpack_from(
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
    return header_len + full * (chunk_size + TAG) + rest + TAG + TRAILER_SIZE


def plaintext_size(header: BlobHeader, blob_length: int) -> int:
    """Plaintext size implied by a total blob length; FormatError if impossible."""
    body = blob_length - len(header.raw) - TRAILER_SIZE
    if body < TAG:
        raise FormatError("blob too short")
    full, rest = divmod(body, header.chunk_size + TAG)
    if rest < TAG:
        raise FormatError("blob length is not consistent with any plaintext size")
    if full > MAX_CHUNK_INDEX:
        raise FormatError("blob has too many chunks")
    return full * header.chunk_size + rest - TAG


def _trailer_nonce(prefix: bytes) -> bytes:
    return _NONCE.pack(prefix, _TRAILER_INDEX, _FLAG_TRAILER)


def _decrypt_trailer(aead: AESGCM, header: BlobHeader, trailer: bytes | memoryview) -> Trailer:
    if len(trailer) != TRAILER_SIZE:
        raise IntegrityError("trailer missing or truncated")
    try:
        plain = aead.decrypt(
            _trailer_nonce(header.nonce_prefix), trailer[:_SEALED_TRAILER_SIZE], header.digest
        )
    except InvalidTag:
        raise IntegrityError("trailer failed authentication") from None
    size, digest = _TRAILER_PLAIN.unpack(plain)
    return Trailer(size=size, sha256=digest)


def open_trailer(key: OrgKey, header: BlobHeader, trailer: bytes) -> Trailer:
    """Decrypt the last TRAILER_SIZE bytes of a blob."""
    data_key, _meta = _open_header(key, header)
    return _decrypt_trailer(AESGCM(data_key), header, trailer)


class SealCheck:
    """Checks that a blob is complete and signed by its owner, with no org key.

    Feed it the blob's bytes as they arrive; ``finish`` raises IntegrityError
    unless every byte is as the owner signed it.  This is what a node holding
    another org's replica can verify.
    """

    def __init__(self, *, owner: str | None = None, blob: str | None = None) -> None:
        self._want_owner = owner
        self._want_blob = blob
        self.header: BlobHeader | None = None
        self.length = 0
        self._head = bytearray()
        self._hash = hashlib.sha256()
        # The last SIGNATURE_SIZE bytes seen: the signature, if the blob ends here.
        self._tail = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.length += len(view)
        if self.header is None:
            self._head += view
            self._try_header()
        if len(view) >= SIGNATURE_SIZE:
            self._hash.update(self._tail)
            self._hash.update(view[:-SIGNATURE_SIZE])
            self._tail = bytearray(view[-SIGNATURE_SIZE:])
        else:
            self._tail += view
            extra = len(self._tail) - SIGNATURE_SIZE
            if extra > 0:
                self._hash.update(self._tail[:extra])
                del self._tail[:extra]

    def _try_header(self) -> None:
        if len(self._head) < FIXED_HEADER_SIZE:
            return
        total = header_length(bytes(self._head[:FIXED_HEADER_SIZE]))
        if len(self._head) < total:
            return
        header = parse_header(bytes(self._head))
        if self._want_owner is not None and header.owner != self._want_owner:
            raise IntegrityError("blob header names a different owner")
        if self._want_blob is not None and header.blob != self._want_blob:
            raise IntegrityError("blob header names a different blob id")
        self.header = header
        self._head = bytearray()

    def finish(self) -> BlobHeader:
        """Verify the owner's signature over the whole blob; return its header."""
        if self.header is None:
            raise IntegrityError("blob truncated inside its header")
        plaintext_size(self.header, self.length)  # a length no encryptor could produce
        _verify(
            self.header.owner_key,
            bytes(self._tail),
            _SEAL_CONTEXT + self._hash.digest(),
            f"blob {self.header.blob[:16]}",
        )
        return self.header


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
    sha256: bytes

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
        self._prefix = os.urandom(NONCE_PREFIX_SIZE)
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
            self._prefix,
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
        self._aad = hashlib.sha256(self.header).digest()
        self._aead = AESGCM(data_key)
        self._hash = hashlib.sha256()
        self._signer = signer
        self._sealed = hashlib.sha256(self.header)  # every byte the signature covers
        # Fixed-size staging buffer filled in place: no reallocation per chunk.
        self._buf = bytearray(chunk_size)
        self._fill = 0
        self._index = 0
        self._done = False
        self.size = 0
        self.sha256 = b""

    def _seal(self, data: bytes | bytearray | memoryview, flag: int) -> bytes:
        if self._index > MAX_CHUNK_INDEX:
            raise ValueError("file too large: chunk index space exhausted")
        nonce = _NONCE.pack(self._prefix, self._index, flag)
        self._index += 1
        sealed = self._aead.encrypt(nonce, data, self._aad)
        self._sealed.update(sealed)
        return sealed

    def update(self, data: bytes | memoryview) -> list[bytes]:
        """Feed plaintext; return the ciphertext chunks it completes."""
        if self._done:
            raise RuntimeError("Encryptor already finalized")
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.size += len(view)
        cs = self._chunk_size
        out: list[bytes] = []
        if self._fill:
            take = min(cs - self._fill, len(view))
            self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            if self._fill < cs:
                return out
            out.append(self._seal(self._buf, _FLAG_MIDDLE))
            self._fill = 0
            view = view[take:]
        # Seal whole chunks straight from the caller's buffer: no copy.
        full = len(view) // cs
        for i in range(full):
            out.append(self._seal(view[i * cs : (i + 1) * cs], _FLAG_MIDDLE))
        rest = len(view) - full * cs
        self._buf[:rest] = view[full * cs :]
        self._fill = rest
        return out

    def finalize(self) -> bytes:
        """Return the last chunk (always present) followed by the signed trailer."""
        if self._done:
            raise RuntimeError("Encryptor already finalized")
        self._done = True
        with memoryview(self._buf) as mv, mv[: self._fill] as pending:
            last = self._seal(pending, _FLAG_LAST)
        self._buf = bytearray()
        self.sha256 = self._hash.digest()
        trailer = self._aead.encrypt(
            _trailer_nonce(self._prefix), _TRAILER_PLAIN.pack(self.size, self.sha256), self._aad
        )
        self._sealed.update(trailer)
        signature = self._signer.sign(_SEAL_CONTEXT + self._sealed.digest())
        return last + trailer + signature


class Decryptor:
    """Streaming, authenticating decryption of one blob.

    ``feed`` only releases chunks that passed authentication, but a stream cut
    at a chunk boundary is only detected by ``finish``: treat the file as
    complete only once ``finish`` has returned.
    """

    header: BlobHeader | None
    metadata: Metadata | None

    def __init__(
        self, key: OrgKey | FileKey, *, owner: str | None = None, blob: str | None = None
    ) -> None:
        self._key = key
        self.header = None
        self.metadata = None
        self._aead: AESGCM | None = None
        self._seal = SealCheck(owner=owner, blob=blob)
        self._buf = bytearray()
        self._index = 0
        self._released = 0
        self._hash = hashlib.sha256()
        self._error: CryptoError | None = None
        self._done = False

    def _check_usable(self) -> None:
        if self._error is not None:
            # A failed stream stays failed: never resume after a bad chunk.
            raise type(self._error)(f"stream already failed: {self._error}")
        if self._done:
            raise RuntimeError("Decryptor already finished")

    def feed(self, data: bytes | memoryview) -> bytes:
        """Consume blob bytes; return newly authenticated plaintext."""
        self._check_usable()
        try:
            return self._feed(memoryview(data).cast("B"))
        except CryptoError as exc:
            self._error = exc
            raise

    def _feed(self, view: memoryview) -> bytes:
        self._seal.feed(view)
        if self._aead is None:
            self._buf += view
            header = self._seal.header
            if header is None:
                return b""
            self.header = header
            data_key, self.metadata = _open_header(self._key, header)
            self._aead = AESGCM(data_key)
            del self._buf[: len(header.raw)]
            return self._drain_buffer()
        if not self._buf:
            # Fast path: decrypt straight from the caller's buffer.
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

    def _open_chunk(self, data: memoryview, flag: int) -> bytes:
        assert self._aead is not None and self.header is not None
        if self._index > MAX_CHUNK_INDEX:
            raise IntegrityError("too many chunks")
        nonce = _NONCE.pack(self.header.nonce_prefix, self._index, flag)
        try:
            plain = self._aead.decrypt(nonce, data, self.header.digest)
        except InvalidTag:
            raise IntegrityError(f"chunk {self._index} failed authentication") from None
        self._index += 1
        self._hash.update(plain)
        self._released += len(plain)
        return plain

    def _process(self, mv: memoryview) -> tuple[int, bytes]:
        assert self.header is not None
        ct = self.header.chunk_size + TAG
        pos = 0
        pieces: list[bytes] = []
        # A full-size chunk is only known not to be the last one once more
        # than a chunk plus a trailer is buffered.
        while len(mv) - pos > ct + TRAILER_SIZE:
            with mv[pos : pos + ct] as piece:
                pieces.append(self._open_chunk(piece, _FLAG_MIDDLE))
            pos += ct
        if not pieces:
            return pos, b""
        if len(pieces) == 1:
            return pos, pieces[0]
        return pos, b"".join(pieces)

    def finish(self) -> tuple[bytes, Trailer]:
        """Authenticate the end of the stream; return (last plaintext, trailer)."""
        self._check_usable()
        try:
            result = self._finish()
        except CryptoError as exc:
            self._error = exc
            raise
        self._done = True
        return result

    def _finish(self) -> tuple[bytes, Trailer]:
        if self._aead is None or self.header is None:
            raise IntegrityError("blob truncated inside its header")
        last_len = len(self._buf) - TRAILER_SIZE
        # The encryptor never writes a full-size last chunk; accepting one would
        # give two encodings of the same file.
        if not TAG <= last_len < self.header.chunk_size + TAG:
            raise IntegrityError("blob truncated or has trailing garbage")
        with memoryview(self._buf) as mv:
            with mv[:last_len] as piece:
                last = self._open_chunk(piece, _FLAG_LAST)
            with mv[last_len:] as tail:
                trailer = _decrypt_trailer(self._aead, self.header, tail)
        self._buf = bytearray()
        if trailer.size != self._released:
            raise IntegrityError("plaintext size does not match the trailer")
        if not _stdlib_hmac.compare_digest(trailer.sha256, self._hash.digest()):
            raise IntegrityError("plaintext SHA-256 does not match the trailer")
        self._seal.finish()
        return last, trailer
