"""The formats' sizes, magic values and signing contexts, and the errors.

Every constant here is part of the on-disk and on-wire format: changing one
needs a new format version.
"""

from __future__ import annotations

import struct

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
_SHARE_CONTEXT = b"dfs-twisted share\x00"
MAX_SHARES = 256  # zfec's limit on the shares of one file
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


class CryptoError(Exception):
    """Base class for errors raised by this module."""


class FormatError(CryptoError):
    """A header, key file or blob is structurally malformed."""


class IntegrityError(CryptoError):
    """Authentication failed: tampered, truncated, reordered or wrong key."""
