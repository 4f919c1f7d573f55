"""Erasure-coded shares of this org's files (``--erasure K-of-N``).

The owner keeps its file's whole blob and sends each of N peers one share: a blob
of its own (id: `share_id` of the file's blob id and the share's index), holding
one zfec block of every segment of the file's blob (erasure.py), encrypted and
signed by the owner as any blob, so a holder verifies, scrubs and is audited on a
share as on a replica, without a key. `ShareMaker` makes shares as a put streams
(or, for a repair, from the blob on disk); `rebuild` fetches any K shares of a
version from peers, checks each against the owner's signature, decodes them, and
commits the file's blob once it verifies as the blob the owner signed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import astuple
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import wire
from ..crypto import (
    CHUNK_SIZE,
    BlobHeader,
    CryptoError,
    Decryptor,
    Encryptor,
    SealCheck,
    Share,
    ciphertext_size,
    share_id,
)
from ..erasure import BLOCK, Erasure, ShareDecoder, ShareEncoder
from ..session import PeerSession, RemoteError, SessionClosed
from ..store import BlobFile, BlobKey
from .errors import DamagedBlob
from .fetch import FETCH_TIMEOUT, Clock
from .holdings import Holdings
from .owner import Owner

log = Logger()

READ_BLOCK = 1 << 20
YIELD_EVERY = 64 * BLOCK  # bytes of a file decoded in one go, the reactor waiting


class ShareMaker:
    """Some shares of one file version, made from its blob's bytes as they come."""

    def __init__(
        self,
        owner: Owner,
        erasure: Erasure,
        name: str,
        version: int,
        mtime: int,
        indices: Sequence[int],
    ) -> None:
        self.indices = tuple(indices)
        self._encoder = ShareEncoder(erasure, self.indices)
        self._erasure = erasure
        self._sealers = [
            Encryptor(
                owner.key,
                owner.signer,
                name,
                version,
                mtime=mtime,
                share=Share(i, erasure.k, erasure.n),
            )
            for i in self.indices
        ]
        self.blobs = [s.blob for s in self._sealers]

    def announced(self, position: int, blob_length: int | None) -> int | None:
        """The length of the share at ``position`` (of ``indices``), for a file blob
        of ``blob_length`` bytes (None: not known yet)."""
        if blob_length is None:
            return None
        header = self._sealers[position].header
        return ciphertext_size(len(header), CHUNK_SIZE, self._erasure.share_size(blob_length))

    def headers(self) -> list[bytes]:
        """The first bytes of each share: its header."""
        return [s.header for s in self._sealers]

    def update(self, data: bytes | memoryview) -> list[list[bytes]]:
        """Take bytes of the file's blob; return the pieces of each share they complete."""
        out: list[list[bytes]] = [[] for _ in self.indices]
        for blocks in self._encoder.update(data):
            for pieces, sealer, block in zip(out, self._sealers, blocks, strict=True):
                pieces += sealer.update(block)
        return out

    def finish(self) -> list[list[bytes]]:
        """The end of the file's blob: the last pieces of each share."""
        out: list[list[bytes]] = []
        for sealer, block in zip(self._sealers, self._encoder.finish(), strict=True):
            out.append([*sealer.update(block), sealer.finalize()])
        return out


def share_pieces(maker: ShareMaker, blob: BlobFile) -> Iterator[bytes]:
    """The one share ``maker`` makes, as pieces, from a whole blob read from ``blob``."""
    assert len(maker.indices) == 1
    yield from maker.headers()
    while data := blob.read(READ_BLOCK):
        for pieces in maker.update(data):
            yield from pieces
    for pieces in maker.finish():
        yield from pieces


class _ShareFetch:
    """One share arriving from a peer: checked and decrypted as it comes (its
    contents are blocks of the file's ciphertext), written to a temp file."""

    def __init__(self, owner: Owner, key: BlobKey, version: int, out: BinaryIO) -> None:
        self.key = key
        self.version = version
        self._out = out
        self._decryptor = Decryptor(owner.key, owner=key.owner, blob=key.blob, version=version)
        self.error: Exception | None = None

    def started(self, size: int) -> None:
        pass

    def data(self, payload: bytes | memoryview) -> None:
        if self.error is None:
            try:
                self._out.write(self._decryptor.feed(payload))
            except CryptoError as e:
                self.error = e

    def finish(self) -> Share:
        """The share it was, once it is whole and verified (DamagedBlob if not)."""
        if self.error is not None:
            raise DamagedBlob(str(self.error))
        try:
            last, _ = self._decryptor.finish()
            self._out.write(last)
        except CryptoError as e:
            raise DamagedBlob(str(e)) from e
        meta = self._decryptor.metadata
        if meta is None or meta.share is None:
            raise DamagedBlob("not a share")
        return meta.share


async def _fetch_share(
    session: PeerSession, sink: _ShareFetch, erasure: Erasure | None, index: int, clock: Clock
) -> Share:
    """Fetch one share into ``sink``; the share, once it is whole and is share
    ``index`` (of ``erasure``, when known already)."""
    reply = session.fetch(wire.Fetch(sink.key.owner, sink.key.blob, sink.version), sink)
    timer = clock.callLater(FETCH_TIMEOUT, reply.cancel)
    try:
        await reply
    finally:
        if timer.active():
            timer.cancel()
    share = sink.finish()
    if share.index != index or (erasure is not None and (share.k, share.n) != astuple(erasure)):
        raise DamagedBlob(f"holds share {share.index} of {share.k}-of-{share.n}")
    return share


async def rebuild(
    owner: Owner,
    holdings: Holdings,
    clock: Clock,
    blob: str,
    version: int,
    holders: dict[int, list[PeerSession]],
) -> BlobHeader | None:
    """Rebuild ``version`` of one of this org's files from K of its shares, fetched
    from ``holders`` (share index -> peers said to hold it), into the store.

    K and N are read from the first share's metadata (the file may have been put
    with other settings than today's); every other share must say the same.
    Returns the blob's header once committed; None when fewer than K shares could be
    had (each failure logged). Nothing is committed unless the rebuilt blob verifies
    as the owner's, whole, at that version.
    """
    key = BlobKey(owner.node_id, blob)
    tmp = holdings.store.root / "tmp"
    got: dict[int, BinaryIO] = {}
    erasure: Erasure | None = None
    try:
        # Shares 0..K-1 first: they are the blob itself, nothing to decode.
        for index in sorted(holders):
            if erasure is not None and len(got) == erasure.k:
                break
            for session in holders[index]:
                out = tempfile.TemporaryFile(dir=tmp)
                sink = _ShareFetch(owner, BlobKey(key.owner, share_id(blob, index)), version, out)
                try:
                    share = await _fetch_share(session, sink, erasure, index, clock)
                except (RemoteError, SessionClosed, DamagedBlob, TimeoutError) as e:
                    out.close()
                    log.info(
                        "{org} could not supply share {index} of {blob}: {error}",
                        org=session.info.org,
                        index=index,
                        blob=blob,
                        error=str(e),
                    )
                    continue
                erasure = Erasure(share.k, share.n)
                got[index] = out
                break
        if erasure is None or len(got) < erasure.k:
            return None
        return await _decode_into_store(holdings, clock, key, version, erasure, got)
    finally:
        for f in got.values():
            f.close()


async def _decode_into_store(
    holdings: Holdings,
    clock: Clock,
    key: BlobKey,
    version: int,
    erasure: Erasure,
    got: dict[int, BinaryIO],
) -> BlobHeader | None:
    """Decode K shares' contents (temp files) into a new local blob, checked as it is
    written against the owner's signature; commit it if it is whole and that version."""
    indices = sorted(got)
    files = [got[i] for i in indices]
    sizes = {os.fstat(f.fileno()).st_size for f in files}
    if len(sizes) != 1:
        log.warn("shares of {blob} differ in length: not rebuilt", blob=key.blob)
        return None
    size = sizes.pop()
    for f in files:
        f.seek(0)
    decoder = ShareDecoder(erasure, indices)
    check = SealCheck(owner=key.owner, blob=key.blob)
    waiting: list[Deferred[None]] = []
    writer = holdings.writer(
        key, pause=lambda: waiting.append(Deferred()), resume=lambda: _fire(waiting)
    )
    try:
        done = 0
        while done < size:
            if waiting:
                await waiting[0]  # the disk queue is full: let it drain
            elif done and done % YIELD_EVERY < BLOCK:
                await _soon(clock)  # let the reactor serve others between these
            block = min(BLOCK, size - done)
            done += block
            data = decoder.segment([f.read(block) for f in files], last=done == size)
            check.feed(data)
            writer.write(data)
        header = check.finish()
        if header.version != version or check.record is None:
            raise DamagedBlob(f"rebuilt version {header.version}, not {version}")
    except (CryptoError, DamagedBlob, ValueError) as e:
        writer.abort()
        log.warn("rebuilding {blob} from shares failed: {error}", blob=key.blob, error=str(e))
        return None
    if not await holdings.publish(key, version, writer, check.record.to_bytes(), key.owner):
        return None
    return header


def _soon(clock: Clock) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    clock.callLater(0, d.callback, None)
    return d


def _fire(waiting: list[Deferred[None]]) -> None:
    while waiting:
        waiting.pop().callback(None)
