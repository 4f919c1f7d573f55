"""What a node puts right once at start-up, before it serves anything.

- Its own blobs of format 2 are rewritten in format 3 (`rewrite_legacy`), as new
  versions: the same name, time and content, with a signature on every chunk.
  Its peers take the new versions at the next sync and drop their old copies;
  until then they go on verifying and serving the old ones (crypto/legacy.py).
- The ledger catches up with the store (`unrecorded`): a node older than the
  ledger, or one whose private/ was restored from an older backup, holds versions
  of its own files that its ledger lacks; they are recorded, so that reads and
  recovery never go back below them.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from ..catalog import Entry
from ..crypto import LEGACY_FORMAT, CryptoError, Decryptor, Encryptor, open_metadata, plaintext_size
from ..index import Row
from ..ledger import Ledger, LedgerEntry
from ..store import BlobKey
from .holdings import Holdings, read_header
from .owner import Owner

log = Logger()

READ = 1 << 20


def rewrite_legacy(owner: Owner, holdings: Holdings, ledger: Ledger) -> list[str]:
    """Rewrite this org's blobs of format 2 in format 3; return the names rewritten.

    Runs at start-up, before the disk thread: the writes are synchronous. A blob
    that does not read (damaged) is left for the scrub and a peer's copy.
    """
    rewritten = []
    for blob, entry in holdings.catalog.entries(owner.node_id):
        if entry.deleted:
            continue
        key = BlobKey(owner.node_id, blob)
        f = holdings.store.open(key)
        if f is None:
            continue
        with f:
            try:
                if read_header(f).format != LEGACY_FORMAT:
                    continue
                f.seek(0)
                rewritten.append(_rewrite(owner, holdings, ledger, key, f))
            except CryptoError as e:
                log.warn("cannot rewrite blob {blob}: {error}", blob=blob, error=str(e))
    if rewritten:
        log.info("rewrote {count} files in the current blob format", count=len(rewritten))
    return rewritten


def _rewrite(owner: Owner, holdings: Holdings, ledger: Ledger, key: BlobKey, f: Any) -> str:
    old = Decryptor(owner.key, owner=key.owner, blob=key.blob)
    first = old.feed(f.read(READ))
    meta = old.metadata
    assert meta is not None  # the header is in the first read
    version = holdings.next_version(owner.node_id, ledger.newest)
    new = Encryptor(owner.key, owner.signer, meta.name, version, mtime=meta.mtime)
    writer = holdings.store.begin(key)
    try:
        writer.write(new.header)
        plain = first
        while True:
            for piece in new.update(plain):
                writer.write(piece)
            data = f.read(READ)
            if not data:
                break
            plain = old.feed(data)
        last, _ = old.finish()
        for piece in new.update(last):
            writer.write(piece)
        writer.write(new.finalize())
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    record = new.record
    assert record is not None
    entry = Entry(version, writer.written, proof=record.to_bytes(), sender=owner.node_id)
    holdings.catalog.set(key, entry)
    holdings.index.write_now(Row(key, entry))
    holdings.catalog.settled(key, version)
    ledger.seed(
        [LedgerEntry(key.blob, version, False, entry.proof, meta.name, new.size, meta.mtime)]
    )
    return meta.name


def unrecorded(owner: Owner, holdings: Holdings, ledger: Ledger) -> list[LedgerEntry]:
    """This org's versions held in the store that are newer than the ledger's."""
    found = []
    for blob, entry in holdings.catalog.entries(owner.node_id):
        written = ledger.get(blob)
        if written is not None and written.version >= entry.version:
            continue
        key = BlobKey(owner.node_id, blob)
        if entry.deleted:
            tomb = holdings.tombstone(key)
            if tomb is not None:
                found.append(LedgerEntry(blob, tomb.version, True, tomb.signature))
            continue
        f = holdings.store.open(key)
        if f is None:
            continue
        try:
            with f:
                header = read_header(f)
                meta = open_metadata(owner.key, header)
                size = plaintext_size(header, holdings.store.size(key) or 0)
        except CryptoError as e:
            log.warn("not recording unreadable blob {blob}: {error}", blob=blob, error=str(e))
            continue
        proof = holdings.proof(key, entry)
        found.append(LedgerEntry(blob, entry.version, False, proof, meta.name, size, meta.mtime))
    return found


__all__ = ["unrecorded"]
