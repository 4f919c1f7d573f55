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

from .blob import (
    BlobHeader,
    BlobRecord,
    FileKey,
    Metadata,
    Share,
    audit_digest,
    check_chunk,
    chunk_at,
    ciphertext_size,
    file_key,
    header_length,
    last_chunk,
    open_metadata,
    parse_header,
    plaintext_size,
    share_id,
    stored_record,
)
from .format import (
    CHUNK_SIZE,
    FIXED_HEADER_SIZE,
    FORMAT_VERSION,
    LEGACY_FORMAT,
    MAX_CHUNK_INDEX,
    MAX_CHUNK_SIZE,
    MAX_NAME_BYTES,
    MAX_SEALED_META,
    MIN_CHUNK_SIZE,
    RECORD_SIZE,
    SIGNATURE_SIZE,
    TAG,
    CryptoError,
    FormatError,
    IntegrityError,
)
from .horizon import Horizon
from .orgkey import OrgKey, is_hex_id, owner_id, validate_name
from .release import Release
from .seal import SealCheck
from .stream import Decryptor, Encryptor
from .tombstone import Tombstone

__all__ = [
    "CHUNK_SIZE",
    "FIXED_HEADER_SIZE",
    "FORMAT_VERSION",
    "LEGACY_FORMAT",
    "MAX_CHUNK_INDEX",
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
    "Horizon",
    "IntegrityError",
    "Metadata",
    "OrgKey",
    "Release",
    "SealCheck",
    "Share",
    "Tombstone",
    "audit_digest",
    "check_chunk",
    "chunk_at",
    "ciphertext_size",
    "file_key",
    "header_length",
    "is_hex_id",
    "last_chunk",
    "open_metadata",
    "owner_id",
    "parse_header",
    "plaintext_size",
    "share_id",
    "stored_record",
    "validate_name",
]
