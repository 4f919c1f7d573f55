"""What a node puts right once at start-up: the ledger catching up with the store.

A node older than the ledger, or one whose private/ was restored from an older
backup, holds versions of its own files that its ledger lacks: they are recorded
before the node serves anything, so that reads and recovery never go back below them.
"""

from __future__ import annotations

from twisted.logger import Logger

from ..crypto import CryptoError, open_metadata, plaintext_size
from ..ledger import Ledger, LedgerEntry
from ..store import BlobKey
from .holdings import Holdings, read_header
from .owner import Owner

log = Logger()


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
        found.append(
            LedgerEntry(blob, entry.version, False, entry.proof, meta.name, size, meta.mtime)
        )
    return found


__all__ = ["unrecorded"]
