"""A blob's header, its per-file key, chunk geometry and the signed record of a version."""

from __future__ import annotations

import hashlib
import hmac as _stdlib_hmac
import json
from dataclasses import dataclass, field

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .format import (
    _CHUNK_CONTEXT,
    _CHUNK_STATEMENT,
    _FIXED,
    _FLAG_LAST,
    _FLAG_MIDDLE,
    _INFO_META,
    _META_AAD_END,
    _NONCE,
    _RECORD,
    _SHARE_CONTEXT,
    _ZERO_NONCE,
    FIXED_HEADER_SIZE,
    FORMAT_VERSION,
    LEGACY_FORMAT,
    MAGIC,
    MAX_CHUNK_INDEX,
    MAX_SEALED_META,
    MAX_SHARES,
    RECORD_SIZE,
    SIGNATURE_SIZE,
    TAG,
    FormatError,
    IntegrityError,
)
from .orgkey import (
    OrgKey,
    chunk_size_ok,
    hkdf,
    is_hex_id,
    owner_id,
    validate_name,
    verify_signature,
)


@dataclass(frozen=True)
class Share:
    """Which erasure-coded share of a file version a blob is: ``index`` of ``n``,
    any ``k`` of which rebuild the file's blob (see erasure.py)."""

    index: int
    k: int
    n: int

    def __post_init__(self) -> None:
        if not (1 <= self.k < self.n <= MAX_SHARES and 0 <= self.index < self.n):
            raise ValueError(f"no share {self.index} of {self.k}-of-{self.n}")


def share_id(blob: str, index: int) -> str:
    """The blob id of share ``index`` of the file whose blob id is ``blob``. Not keyed:
    it is derived from the file's blob id, which is (the name's MAC)."""
    return blake3(_SHARE_CONTEXT + bytes.fromhex(blob) + bytes([index])).hexdigest()


@dataclass(frozen=True)
class Metadata:
    """Encrypted per-file metadata (``share``: set in the blob of an erasure-coded share)."""

    name: str
    mtime: int
    share: Share | None = None

    def to_json(self) -> bytes:
        fields: dict[str, object] = {"name": self.name, "mtime": self.mtime}
        if self.share is not None:
            fields["share"] = [self.share.index, self.share.k, self.share.n]
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def blob_id(self, key: OrgKey) -> str:
        """The blob id this metadata belongs in: the name's MAC, or its share's id."""
        blob = key.blob_id(self.name)
        return blob if self.share is None else share_id(blob, self.share.index)


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
    if not chunk_size_ok(chunk_size):
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
        plain = AESGCM(hkdf(data_key, _INFO_META)).decrypt(
            _ZERO_NONCE, header.sealed_meta, header.raw[:_META_AAD_END]
        )
    except InvalidTag:
        raise IntegrityError("metadata failed authentication") from None
    try:
        obj = json.loads(plain)
    except ValueError:
        raise FormatError("metadata is not valid JSON") from None
    if not isinstance(obj, dict) or not {"name", "mtime"} <= set(obj) <= {"name", "mtime", "share"}:
        raise FormatError("metadata must be an object with name and mtime")
    name, mtime, share = obj["name"], obj["mtime"], obj.get("share")
    if not isinstance(name, str) or type(mtime) is not int:
        raise FormatError("metadata has wrong field types")
    try:
        validate_name(name)
    except ValueError as exc:
        raise FormatError(f"metadata name invalid: {exc}") from None
    meta = Metadata(name, mtime, None if share is None else _parse_share(share))
    # The blob id must be the name's MAC (or its share's id); otherwise an insider
    # could file a blob under one name while its metadata claims another. (A file
    # key has no name key: the owner's signature over the grant binds name and blob.)
    if isinstance(key, OrgKey) and not _stdlib_hmac.compare_digest(meta.blob_id(key), header.blob):
        raise IntegrityError("blob id does not match the encrypted file name")
    return data_key, meta


def _parse_share(field: object) -> Share:
    if not (isinstance(field, list) and len(field) == 3 and all(type(n) is int for n in field)):
        raise FormatError("metadata share must be [index, k, n]")
    try:
        return Share(*field)
    except ValueError as e:
        raise FormatError(f"metadata share invalid: {e}") from None


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
    message = chunk_statement(header, index, last, end, blake3(sealed).digest())
    verify_signature(header.owner_key, chunk[-SIGNATURE_SIZE:], message, f"chunk {index}")


def audit_digest(nonce: bytes, chunk: bytes | memoryview) -> bytes:
    """What a holder answers to a storage audit of one chunk: a hash keyed by a fresh
    nonce, so it can only be computed from the chunk's bytes, not remembered."""
    return blake3(chunk, key=nonce).digest()


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return _NONCE.pack(prefix, index, _FLAG_LAST if last else _FLAG_MIDDLE)


def chunk_statement(
    header: BlobHeader, index: int, last: bool, size: int, chunk_digest: bytes
) -> bytes:
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
        if not (is_hex_id(self.owner) and is_hex_id(self.blob)):
            raise FormatError("record ids must be 64 lowercase hex digits")
        if owner_id(owner_key) != self.owner:
            raise IntegrityError("the key given is not the record's owner's")
        verify_signature(owner_key, self.signature, self._message(), f"record of {self.blob[:16]}")
        return self
