"""Streaming encryption and decryption of one file version."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .blob import (
    BlobHeader,
    BlobRecord,
    FileKey,
    Metadata,
    Share,
    _nonce,
    _open_header,
    chunk_statement,
    parse_header,
)
from .format import (
    _FIXED,
    _INFO_META,
    _MAX_U64,
    _META_AAD_END,
    _ZERO_NONCE,
    CHUNK_SIZE,
    FORMAT_VERSION,
    KEY_SIZE,
    LEGACY_FORMAT,
    MAGIC,
    MAX_CHUNK_INDEX,
    MAX_CHUNK_SIZE,
    MAX_SEALED_META,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_SIZE,
    SIGNATURE_SIZE,
    TAG,
    CryptoError,
    IntegrityError,
)
from .orgkey import OrgKey, chunk_size_ok, hkdf, owner_id, raw_public_key, verify_signature
from .seal import HeaderReader

if TYPE_CHECKING:
    from .legacy import LegacyDecryptor


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
        share: Share | None = None,
    ) -> None:
        owner_key = raw_public_key(signer)
        self.owner = owner = owner_id(owner_key)
        if not isinstance(version, int) or not 0 <= version <= _MAX_U64:
            raise ValueError("version must be an unsigned 64-bit integer")
        if not isinstance(chunk_size, int) or not chunk_size_ok(chunk_size):
            raise ValueError(f"chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
        if mtime is None:
            mtime = int(time.time())
        metadata = Metadata(name, mtime, share)
        self.blob = metadata.blob_id(key)  # validates the name
        self._chunk_size = chunk_size
        data_key = os.urandom(KEY_SIZE)
        prefix = os.urandom(NONCE_PREFIX_SIZE)
        owner_raw = bytes.fromhex(owner)
        blob_raw = bytes.fromhex(self.blob)
        wrapped = key._wrap(data_key, owner_raw, blob_raw)
        meta_json = metadata.to_json()
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
        sealed = AESGCM(hkdf(data_key, _INFO_META)).encrypt(
            _ZERO_NONCE, meta_json, fixed[:_META_AAD_END]
        )
        if len(sealed) > MAX_SEALED_META:
            raise ValueError("metadata too large")
        self.header = fixed + sealed
        self._parsed = parse_header(self.header)
        self._aead = AESGCM(data_key)
        self._signer = signer
        # Staging buffer for a partial chunk: the slice assignments in update() grow
        # it to one chunk at most, then it is filled in place (no reallocation per
        # chunk); a small file never pays for a whole chunk's zeroed buffer.
        self._buf = bytearray()
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
        signature = self._signer.sign(chunk_statement(header, self._index, last, ended, digest))
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
            _stage(self._buf, self._fill, view[:take])
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
        _stage(self._buf, 0, view[full * cs :])
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
        self._reader = HeaderReader(owner, blob)
        self._legacy: LegacyDecryptor | None = None
        # The start of a chunk split between two feeds, filled in place as the
        # Encryptor's staging buffer is: it grows to one chunk at most, once.
        self._buf = bytearray()
        self._fill = 0
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
        self._fill = 0
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
        return self._chunks(view)

    def _chunks(self, view: memoryview) -> bytes:
        assert self.header is not None
        span = self.header.span
        first = b""
        if self._fill:
            # Complete the split chunk from the front of these bytes: only its
            # pieces are copied, the rest is opened from the caller's buffer.
            take = min(span - self._fill, len(view))
            _stage(self._buf, self._fill, view[:take])
            self._fill += take
            if self._fill < span:
                return b""
            with memoryview(self._buf) as mv, mv[:span] as chunk:
                first = self._open_chunk(chunk, last=False)
            self._fill = 0
            view = view[take:]
        consumed, out = self._process(view)
        rest = len(view) - consumed
        _stage(self._buf, 0, view[consumed:])
        self._fill = rest
        if not first:
            return out
        return first + out if out else first

    def _open_chunk(self, chunk: memoryview, last: bool) -> bytes:
        header = self.header
        assert self._aead is not None and header is not None
        if self._index > MAX_CHUNK_INDEX:
            raise IntegrityError("too many chunks")
        sealed = chunk[:-SIGNATURE_SIZE]
        digest = blake3(sealed).digest()
        size = self._released + len(sealed) - TAG
        message = chunk_statement(header, self._index, last, size, digest)
        # The owner's signature first: only the owner's bytes are ever decrypted.
        verify_signature(header.owner_key, chunk[-SIGNATURE_SIZE:], message, f"chunk {self._index}")
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
        if not TAG + SIGNATURE_SIZE <= self._fill < self.header.span:
            raise IntegrityError("blob truncated or has trailing garbage")
        with memoryview(self._buf) as mv, mv[: self._fill] as pending:
            last = self._open_chunk(pending, last=True)
        self._buf = bytearray()
        self._fill = 0
        return last, self.record


def _stage(buffer: bytearray, at: int, data: memoryview) -> None:
    """Copy ``data`` into ``buffer`` at ``at``, growing it if it is too short.

    Slice assignment to a bytearray copies a memoryview into a temporary first (a
    second copy, and a fresh allocation of its size); a memoryview of the buffer
    takes it in one copy. Growth goes by slice assignment, only until the buffer
    holds a chunk."""
    end = at + len(data)
    if len(buffer) < end:
        buffer[at:] = data
        return
    with memoryview(buffer) as view:
        view[at:end] = data
