"""What this node holds: the one place where the catalog and the disk are kept in step.

Every change to what is held goes through here: a blob version committed
(`publish`), a deletion recorded (`bury`), a damaged blob dropped (`damaged`), a
blob gone behind the node's back forgotten (`held`). The catalog lives in memory
and on disk (index.StoreIndex), from which it is loaded at start-up (`load_catalog`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from ..catalog import Catalog, Entry
from ..crypto import (
    FIXED_HEADER_SIZE,
    LEGACY_FORMAT,
    BlobHeader,
    CryptoError,
    Tombstone,
    header_length,
    last_chunk,
    stored_record,
)
from ..crypto import parse_header as _parse_header
from ..diskqueue import DiskQueue, QueuedBlob
from ..index import Row, StoreIndex
from ..store import BlobFile, BlobKey, BlobStore

log = Logger()


def read_header(f: BlobFile) -> BlobHeader:
    """Parse the header at the start of an open blob file."""
    prefix = f.read(FIXED_HEADER_SIZE)
    total = header_length(prefix)
    rest = f.read(total - len(prefix))
    return _parse_header(prefix + rest)


class Holdings:
    """The blobs and tombstones on disk, and the catalog that indexes them."""

    def __init__(
        self, store: BlobStore, catalog: Catalog, disk: DiskQueue, index: StoreIndex
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.disk = disk
        self.index = index
        self._publishing: dict[BlobKey, int] = {}  # versions whose commit is queued
        # Publishes of a version whose commit is already queued wait for that commit.
        self._waiting: dict[tuple[BlobKey, int], list[Deferred[None]]] = {}
        # The last commit begun of each key, done or not: a newer one starts after it.
        self._last_commit: dict[BlobKey, Deferred[None]] = {}

    async def settle(self) -> None:
        """Wait until no commit is under way and the index holds every row: at a stop,
        before the disk threads end. A commit that ended after them would leave a
        blob file that neither the index nor the catalog's snapshot knows of."""
        while self._last_commit:
            await DeferredList(list(self._last_commit.values()))
        await self.index.written()

    def writer(
        self,
        key: BlobKey,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> QueuedBlob:
        """A new blob of ``key``, written on the disk thread; nothing is visible until
        `publish` commits it."""
        return self.disk.blob(self.store.begin(key), pause=pause, resume=resume)

    def next_version(self, owner: str, above: int = 0) -> int:
        """A version above every one ``owner`` has used (and ``above``): time-based,
        never going back."""
        return max(time.time_ns(), self.catalog.newest(owner) + 1, above + 1)

    async def publish(
        self,
        key: BlobKey,
        version: int,
        writer: QueuedBlob,
        proof: bytes,
        sender: str,
        then: Callable[[], None] | None = None,
    ) -> bool:
        """Commit a written blob version, unless it or a newer one is held or on its way.

        Commits of one key can be queued at once (a put, a replica, a repair): the
        newest must be the one left on disk. True if this version is now held.
        ``proof``: the blob's record; ``sender``: the node whose quota it counts on;
        ``then``: run on the disk thread once the blob file is durable (QueuedBlob.commit),
        also when a deletion landed meanwhile; if it fails, so does the publish, with
        the blob held all the same.
        """
        pending = self._publishing.get(key)
        if pending is not None and pending == version:
            # The same version, on its way from another sender (a relayed copy): this
            # copy is not needed, and the answer is whether that commit lands. Answering
            # before it lands would send the owner an audit of a file not there yet.
            writer.abort()
            waiter: Deferred[None] = Deferred()
            self._waiting.setdefault((key, version), []).append(waiter)
            await waiter
            held = self.catalog.get(key)
            return held is not None and held.version == version and not held.deleted
        if not self.catalog.is_newer(key, version) or (pending is not None and pending > version):
            writer.abort()
            return False
        self._publishing[key] = version
        # Commits of one key one after the other (their fsyncs run side by side with
        # other keys'): the newest version's rename must be the last.
        previous = self._last_commit.get(key)
        committed: Deferred[None] = Deferred()
        self._last_commit[key] = committed
        failed: list[BaseException] = []

        def after() -> None:
            assert then is not None
            try:
                then()
            except BaseException as e:
                failed.append(e)  # raised once the catalog knows the blob is here

        try:
            try:
                if previous is not None:
                    await previous
                await writer.commit(None if then is None else after)
            finally:
                if self._publishing.get(key) == version:
                    del self._publishing[key]
            published = self.catalog.is_newer(key, version)
            if published:
                entry = Entry(version, writer.written, proof=proof, sender=sender)
                self.catalog.set(key, entry)
                # Not awaited: a crash before this row is in means the store is indexed anew.
                self.index.put(Row(key, entry)).addCallbacks(
                    lambda _: self.catalog.settled(key, version),
                    lambda f: log.failure("index row of {blob} not written", f, blob=key.blob),
                )
            else:
                # A deletion landed while the commit was queued: the newer change wins.
                self.store.delete(key)
            if failed:
                raise failed[0]
            return published
        finally:
            # Only now may the next commit of this key begin: this one's file is
            # in place, or removed if a deletion landed meanwhile.
            if self._last_commit.get(key) is committed:
                del self._last_commit[key]
            committed.callback(None)
            for waiter in self._waiting.pop((key, version), []):
                waiter.callback(None)

    async def bury(self, tomb: Tombstone, sender: str) -> bool:
        """Record a verified tombstone if it is newer than what is held; True if it was.

        Durable (in the index) when this returns; the blob file goes right after,
        on the disk thread, without a sync of its own: found after a crash, it is
        older than the tombstone and removed then.
        """
        key = BlobKey(tomb.owner, tomb.blob)
        if not self.catalog.is_newer(key, tomb.version):
            return False
        self.catalog.set(key, _buried(tomb, sender))
        await self.index.put(Row(key, _buried(tomb, sender), tomb.to_bytes()))
        self.catalog.settled(key, tomb.version)
        return True

    def buried(self, rows: list[Row]) -> None:
        """On the disk thread, once deletions are durable: remove their blob files,
        unless a newer version took the file's place meanwhile."""
        for row in rows:
            if row.entry.deleted:
                self._remove_if_older(row.key, row.entry.version)

    def _remove_if_older(self, key: BlobKey, version: int) -> None:
        with self.store.renames:  # no newer version renamed in between check and unlink
            f = self.store.open(key)
            if f is None:
                return
            try:
                with f:
                    older = read_header(f).version < version
            except CryptoError:
                older = True
            if older:
                self.store.unlink(key)

    async def release(self, key: BlobKey, version: int) -> bool:
        """Drop a replica its owner released (this version exactly); True if dropped."""
        held = self.catalog.get(key)
        if held is None or held.deleted or held.version != version:
            return False
        self._forget(key)
        await self.disk.run(self._remove_if_older, key, version + 1)
        return True

    def collect(self, owner: str, horizon: int) -> int:
        """Drop ``owner``'s tombstones at or below ``horizon`` (its owner signed that
        every node has them); return how many. Blobs are not touched."""
        collected = [
            blob
            for blob, entry in self.catalog.entries(owner)
            if entry.deleted and entry.version <= horizon
        ]
        for blob in collected:
            self._forget(BlobKey(owner, blob))
        return len(collected)

    def proof(self, key: BlobKey, entry: Entry) -> bytes:
        """The owner's proof of ``entry`` (the blob's record or the tombstone's
        signature): kept in memory until its row is in the index, then read there."""
        if entry.proof:
            return entry.proof
        return self.proofs(key.owner, [(key.blob, entry)]).get(key.blob, b"")

    def proofs(self, owner: str, entries: list[tuple[str, Entry]]) -> dict[str, bytes]:
        """The proofs of a page of ``owner``'s entries (in blob order): one query."""
        if not entries:
            return {}
        rows = self.index.proofs(owner, entries[0][0], entries[-1][0])
        found = {}
        for blob, entry in entries:
            row = rows.get(blob)
            if entry.proof:
                found[blob] = entry.proof
            elif row is not None and row[0] == entry.version:
                found[blob] = row[1]
        return found

    def tombstone(self, key: BlobKey) -> Tombstone | None:
        """The stored tombstone of ``key`` (None: none, or it no longer verifies)."""
        record = self.index.tomb(key)
        if record is None:
            return None
        try:
            return Tombstone.from_bytes(record)
        except CryptoError as e:
            log.warn("ignoring a bad tombstone {blob}: {error}", blob=key.blob, error=str(e))
            return None

    def damaged(self, key: BlobKey, why: str) -> None:
        """Drop a local blob that failed verification: peers hold good copies."""
        log.warn("local blob {blob} is damaged ({why}); removing it", blob=key.blob, why=why)
        self.store.delete(key)
        held = self.catalog.get(key)
        if held is not None and not held.deleted:
            self._forget(key)

    def _forget(self, key: BlobKey) -> None:
        self.catalog.forget(key)
        self.index.drop(key)

    def held(self, key: BlobKey) -> Entry | None:
        """The catalog's entry for ``key``, checked against the disk: a blob that went
        missing behind the node's back is forgotten (and None returned)."""
        held = self.catalog.get(key)
        if held is not None and not held.deleted and not self.store.exists(key):
            self._forget(key)
            return None
        return held

    def open(self, key: BlobKey) -> BlobFile | None:
        """The stored blob, opened for reading (None: not here; then it is forgotten)."""
        f = self.store.open(key)
        if f is None:
            self.held(key)
        return f


def _buried(tomb: Tombstone, sender: str) -> Entry:
    return Entry(tomb.version, 0, deleted=True, proof=tomb.signature, sender=sender)


def stored_proof(f: BlobFile, header: BlobHeader, size: int) -> bytes:
    """The record of a stored blob, read from its last chunk (none for the old format)."""
    if header.format == LEGACY_FORMAT:
        return b""
    offset, _ = last_chunk(header, size)
    f.seek(offset)
    return stored_record(header, size, f.read(size - offset)).to_bytes()


def load_catalog(store: BlobStore, index: StoreIndex) -> Catalog:
    """The catalog at start-up: from the index if the node stopped cleanly, else
    indexed anew from the store (blobs) and the index (tombstones)."""
    if index.clean:
        # A clean index was written by a node that had moved any tombstone files
        # into it already: the store is not walked.
        return index.load()
    legacy = _legacy_tombstones(store)
    catalog = Catalog()
    log.info("indexing the store (after a crash, or a new or damaged index)")
    known = {row.key: row for row in index.rows()}
    tombs = {key: row.tomb for key, row in known.items() if row.tomb is not None}
    for key, (tomb, record) in legacy.items():
        if catalog.is_newer(key, tomb.version) and (
            key not in known or known[key].entry.version < tomb.version
        ):
            catalog.set(key, _buried(tomb, key.owner))
            tombs[key] = record
    for key, row in known.items():
        if row.tomb is not None and catalog.is_newer(key, row.entry.version):
            catalog.set(key, row.entry)
    for owner in store.owners():
        for blob in store.blobs(owner):
            key = BlobKey(owner, blob)
            f = store.open(key)
            if f is None:
                continue
            try:
                with f:
                    header = read_header(f)
                    size = os.fstat(f.fileno()).st_size
                    proof = stored_proof(f, header, size)
            except CryptoError as e:
                # Left for scrub and get to find and replace; not listed meanwhile.
                log.warn("unreadable blob {blob}: {error}", blob=blob, error=str(e))
                continue
            if not catalog.is_newer(key, header.version):
                store.unlink(key)  # deleted before a crash finished removing it
                continue
            was = known.get(key)
            # Who sent it is kept while the version is the same; else its owner pays.
            sender = was.entry.sender if was and was.entry.version == header.version else owner
            catalog.set(key, Entry(header.version, size, proof=proof, sender=sender))
    rows = []
    for owner in catalog.owners():
        for blob, entry in catalog.entries(owner):
            key = BlobKey(owner, blob)
            rows.append(Row(key, entry, tombs.get(key) if entry.deleted else None))
    index.replace_all(rows)
    catalog.settled_all()
    for key in legacy:
        store.remove_tombstone(key)
    return catalog


def _legacy_tombstones(store: BlobStore) -> dict[BlobKey, tuple[Tombstone, bytes]]:
    """Tombstone files an older node left in the store: moved into the index."""
    found = {}
    for owner in store.owners():
        for blob in store.tombstones(owner):
            key = BlobKey(owner, blob)
            record = store.tombstone(key) or b""
            try:
                tomb = Tombstone.from_bytes(record)
                if (tomb.owner, tomb.blob) != (owner, blob):
                    raise CryptoError("it is another blob's")
            except CryptoError as e:
                log.warn("ignoring a bad tombstone {blob}: {error}", blob=blob, error=str(e))
                continue
            found[key] = (tomb, record)
    return found
