"""Checking a blob as it arrives, without the org key: what a holder does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from blake3 import blake3

from .blob import BlobHeader, BlobRecord, chunk_statement, header_length, parse_header
from .format import (
    FIXED_HEADER_SIZE,
    LEGACY_FORMAT,
    MAX_CHUNK_INDEX,
    SIGNATURE_SIZE,
    TAG,
    IntegrityError,
)
from .orgkey import verify_signature

if TYPE_CHECKING:
    from .legacy import LegacySealCheck


class HeaderReader:
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
        self._reader = HeaderReader(owner, blob)
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
        message = chunk_statement(header, self._index, last, self._plain, digest)
        verify_signature(header.owner_key, signature, message, f"chunk {self._index}")
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
