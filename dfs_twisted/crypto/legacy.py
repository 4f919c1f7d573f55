"""Reading blobs of format 2, written before format 3.

Format 2 sealed a whole blob with one signature over the SHA-256 of every byte
before it, and ended with an encrypted trailer holding the plaintext size and
SHA-256. Nodes still verify, serve and read such blobs; an owner rewrites its own
in format 3 once, at start-up (files.migrate), and its peers then replace their
copies with the new versions. Nothing writes format 2 any more.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .blob import BlobHeader
from .format import MAX_CHUNK_INDEX, SIGNATURE_SIZE, TAG, FormatError, IntegrityError
from .orgkey import verify_signature

_SEAL_CONTEXT = b"dfs-twisted v2 blob seal\x00"
_TRAILER_PLAIN = struct.Struct(">Q32s")
_SEALED_TRAILER_SIZE = _TRAILER_PLAIN.size + TAG
TRAILER_SIZE = _SEALED_TRAILER_SIZE + SIGNATURE_SIZE
_NONCE = struct.Struct(">7sIB")
_TRAILER_INDEX = 0xFFFFFFFF
_FLAG_MIDDLE, _FLAG_LAST, _FLAG_TRAILER = 0, 1, 2


def plaintext_size(header: BlobHeader, blob_length: int) -> int:
    body = blob_length - len(header.raw) - TRAILER_SIZE
    if body < TAG:
        raise FormatError("blob too short")
    full, rest = divmod(body, header.chunk_size + TAG)
    if rest < TAG:
        raise FormatError("blob length is not consistent with any plaintext size")
    if full > MAX_CHUNK_INDEX:
        raise FormatError("blob has too many chunks")
    return full * header.chunk_size + rest - TAG


class LegacySealCheck:
    """The owner's signature over a whole format-2 blob, fed what follows the header."""

    def __init__(self, header: BlobHeader) -> None:
        self._header = header
        self._hash = hashlib.sha256(header.raw)
        self._length = len(header.raw)
        self._tail = bytearray()  # the last SIGNATURE_SIZE bytes seen

    def feed(self, view: memoryview) -> None:
        self._length += len(view)
        self._tail += view
        extra = len(self._tail) - SIGNATURE_SIZE
        if extra > 0:
            self._hash.update(self._tail[:extra])
            del self._tail[:extra]

    def finish(self) -> None:
        plaintext_size(self._header, self._length)
        verify_signature(
            self._header.owner_key,
            bytes(self._tail),
            _SEAL_CONTEXT + self._hash.digest(),
            f"blob {self._header.blob[:16]}",
        )


class LegacyDecryptor:
    """Decryption of a format-2 blob, fed what follows the header."""

    def __init__(self, header: BlobHeader, data_key: bytes) -> None:
        self._header = header
        self._aead = AESGCM(data_key)
        self._seal = LegacySealCheck(header)
        self._buf = bytearray()
        self._index = 0
        self._released = 0
        self._hash = hashlib.sha256()

    def _open(self, data: bytes | bytearray | memoryview, flag: int, index: int) -> bytes:
        nonce = _NONCE.pack(self._header.nonce_prefix, index, flag)
        try:
            return self._aead.decrypt(nonce, data, self._header.digest)
        except InvalidTag:
            raise IntegrityError(f"chunk {index} failed authentication") from None

    def feed(self, view: memoryview) -> bytes:
        self._seal.feed(view)
        self._buf += view
        span = self._header.chunk_size + TAG
        pieces = []
        pos = 0
        # A full chunk is only known not to be the last once a chunk and a trailer follow.
        while len(self._buf) - pos > span + TRAILER_SIZE:
            plain = self._open(self._buf[pos : pos + span], _FLAG_MIDDLE, self._index)
            self._index += 1
            self._hash.update(plain)
            pieces.append(plain)
            pos += span
        del self._buf[:pos]
        self._released += sum(map(len, pieces))
        return b"".join(pieces)

    def finish(self) -> bytes:
        last_len = len(self._buf) - TRAILER_SIZE
        if not TAG <= last_len < self._header.chunk_size + TAG:
            raise IntegrityError("blob truncated or has trailing garbage")
        last = self._open(self._buf[:last_len], _FLAG_LAST, self._index)
        self._hash.update(last)
        trailer = self._open(
            self._buf[last_len : last_len + _SEALED_TRAILER_SIZE], _FLAG_TRAILER, _TRAILER_INDEX
        )
        size, digest = _TRAILER_PLAIN.unpack(trailer)
        if size != self._released + len(last):
            raise IntegrityError("plaintext size does not match the trailer")
        if not hmac.compare_digest(digest, self._hash.digest()):
            raise IntegrityError("plaintext SHA-256 does not match the trailer")
        self._seal.finish()
        return last
