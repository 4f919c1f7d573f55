"""Listing across peers (`ls`, files only peers hold) and `recover` after a loss.

What peers say they hold of this org's namespace is a claim. It counts only when
it carries this org's signature: a blob's record, or a tombstone. Recovery never
signs anything because a peer claims it, takes no version older than the ledger's,
and says so when the newest version of a file cannot be had.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from blake3 import blake3
from twisted.logger import Logger

from .. import wire
from ..crypto import (
    BlobHeader,
    BlobRecord,
    CryptoError,
    Metadata,
    OrgKey,
    open_metadata,
    parse_header,
    plaintext_size,
    share_id,
)
from ..keys import ReadKey
from ..ledger import Ledger, LedgerEntry
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .audit import Auditor
from .errors import DamagedBlob
from .fetch import Fetcher
from .holdings import Holdings, read_header
from .owner import Owner
from .shares import rebuild
from .sync import Sync

log = Logger()

Listings = dict[str, dict[str, wire.ListEntry]]  # peer node id -> blob -> what it claims
Copies = tuple[int, int | None]  # peers holding a version of a file; its shares held


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    blob: str
    mtime: int
    replicas: int
    here: bool = True  # held by this node (else only by peers: `recover` brings it back)
    wanted: int | None = None  # copies (or, with erasure, shares) this org wants of its files
    shares: int | None = None  # with erasure coding: distinct shares of it peers hold


class Recovery:
    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        ledger: Ledger,
        peers: Callable[[], Sequence[PeerSession]],
        fetcher: Fetcher,
        sync: Sync,
        auditor: Auditor,
    ) -> None:
        self._auditor = auditor
        self._verified: set[tuple[str, int, str]] = set()
        self._owner = owner
        self._holdings = holdings
        self._ledger = ledger
        self._peers = peers
        self._fetcher = fetcher
        self._sync = sync

    def _holders(self, listings: Listings, blob: str, version: int, own: bool = True) -> int:
        """How many peers hold exactly this version: they say so (with this org's proof
        of it, for this org's blobs) and did not fail an audit of it."""
        return sum(
            (theirs := listing.get(blob)) is not None
            and not theirs.deleted
            and theirs.version == version
            and (not own or self._proof_holds(blob, theirs))
            and not self._auditor.failed_holder(peer, blob, version)
            for peer, listing in listings.items()
        )

    def _proof_holds(self, blob: str, claim: wire.ListEntry) -> bool:
        """Whether a claim about this org's blob carries its proof. Remembered: every
        holder of a version shows the same proof, and `ls` is asked often."""
        seen = (blob, claim.version, claim.proof)
        if seen not in self._verified:
            if not self._owner.proves(blob, claim, self._ledger.newest):
                return False
            if len(self._verified) > 100_000:
                self._verified.clear()
            self._verified.add(seen)
        return True

    async def peer_listings(self, owner: str) -> Listings:
        """What each live peer holds of ``owner``'s namespace, keyed by peer node id."""
        listings: Listings = {}
        for session in self._peers():
            try:
                listings[session.info.node_id] = await PeerClient(session).list_all(owner)
            except (RemoteError, SessionClosed) as e:
                log.warn("could not list {org}: {error}", org=session.info.org, error=str(e))
        return listings

    def _proven(self, listings: Listings) -> dict[str, list[tuple[str, wire.ListEntry]]]:
        """Per blob of this org, the (peer, claim) pairs this org's signature proves."""
        proven: dict[str, list[tuple[str, wire.ListEntry]]] = {}
        newest = self._ledger.newest
        for peer, listing in listings.items():
            for blob, claim in listing.items():
                if self._owner.proves(blob, claim, newest):
                    proven.setdefault(blob, []).append((peer, claim))
                elif claim.proof:
                    log.warn(
                        "peer {peer} claims version {version} of {blob} with a proof that "
                        "does not verify: ignored",
                        peer=peer,
                        version=claim.version,
                        blob=blob,
                    )
        return proven

    async def list_files(self, reader: ReadKey | None = None, ask: bool = True) -> list[FileEntry]:
        """This org's files held here (or, with ``reader``, another org's); ``ask``
        False: this org's copies counted from what placement knows peers hold,
        without a listing from any peer."""
        org = reader or self._owner.read_key
        known = not ask and reader is None
        listings = {} if known else await self.peer_listings(org.org_id)
        if reader is None:
            # What peers just listed is what the page (copies=known) shows next.
            for peer, listing in listings.items():
                self._sync.learn(peer, listing)

        n = self._erasure_n() if reader is None else 0

        def copies(blob: str, version: int) -> Copies:
            """Peers holding this version (and with erasure coding, how many distinct
            shares of it peers hold): as this node knows, or as they listed it."""
            placement = self._sync.placement
            if known:
                shares = placement.copies(blob, version) if n else None
                return len(placement.holders(blob, version)), shares
            own = reader is None
            if n:
                ids = [share_id(blob, i) for i in range(n)]
                shares = sum(self._holders(listings, s, version, own) > 0 for s in ids)
            return self._holders(listings, blob, version, own), shares if n else None

        store = self._holdings.store
        entries = []
        for blob, held in self._holdings.catalog.entries(org.org_id):
            if held.deleted:
                continue
            key = BlobKey(org.org_id, blob)
            w = self._ledger.get(blob) if reader is None else None
            if w and w.version == held.version and w.name and w.size is not None and w.mtime:
                # The ledger has this version's name, size and time: no header to
                # open, only the disk to check (a blob gone is forgotten, as below).
                if self._holdings.held(key) is None:
                    continue
                replicas, shares = copies(blob, held.version)
                entries.append(
                    FileEntry(w.name, w.size, blob, w.mtime, 1 + replicas, shares=shares)
                )
                continue
            # Through holdings: a blob gone from disk is forgotten here, so that the
            # ledger (or a peer's proof) lists the file below as held elsewhere
            # rather than it vanishing from `ls`.
            f = self._holdings.open(key)
            if f is None:
                continue
            try:
                with f:
                    header = read_header(f)
                    meta = open_metadata(org.key, header)
                    size = plaintext_size(header, store.size(key) or 0)
            except CryptoError as e:
                log.warn("skipping unreadable blob {blob}: {error}", blob=blob, error=str(e))
                continue
            replicas, shares = copies(blob, held.version)
            entries.append(
                FileEntry(meta.name, size, blob, meta.mtime, 1 + replicas, shares=shares)
            )
        if known:
            entries += self._ledger_elsewhere(self._ledger.live(), copies)
        elif reader is None:
            entries += await self._own_held_elsewhere(listings, copies)
        else:
            entries += await self._held_elsewhere(org, listings)
        return sorted(entries, key=lambda e: e.name)

    def _ledger_elsewhere(
        self, written: list[LedgerEntry], copies: Callable[[str, int], Copies]
    ) -> list[FileEntry]:
        """The files of ``written`` (ledger entries) whose newest version is not held
        here, each with ``copies(blob, version)`` peers holding it (and its shares)."""
        found = []
        for entry in written:
            key = BlobKey(self._owner.node_id, entry.blob)
            if entry.name is None or not self._holdings.catalog.is_newer(key, entry.version):
                continue  # held here: listed already
            replicas, shares = copies(entry.blob, entry.version)
            found.append(
                FileEntry(
                    entry.name,
                    entry.size or 0,
                    entry.blob,
                    entry.mtime or 0,
                    replicas,
                    here=False,
                    shares=shares,
                )
            )
        return found

    async def _own_held_elsewhere(
        self, listings: Listings, copies: Callable[[str, int], Copies]
    ) -> list[FileEntry]:
        """This org's files whose newest version this node does not hold: from the
        ledger, and from what peers prove (for files the ledger does not know)."""
        catalog = self._holdings.catalog
        written = self._ledger.live()
        known = {entry.blob for entry in written}
        found = self._ledger_elsewhere(written, copies)
        sessions = {s.info.node_id: s for s in self._peers()}
        for blob, claims in sorted(self._proven(listings).items()):
            newest = max(claims, key=lambda c: c[1].version)[1]
            key = BlobKey(self._owner.node_id, blob)
            if blob in known or newest.deleted or not catalog.is_newer(key, newest.version):
                continue
            holders = [sessions[p] for p, c in claims if c == newest and p in sessions]
            file = await self._proven_file(holders, key, newest)
            if file is not None:
                found.append(file)
        return found

    async def _proven_file(
        self, holders: list[PeerSession], key: BlobKey, claim: wire.ListEntry
    ) -> FileEntry | None:
        """A file's entry from a header a peer holds, checked against the proven record."""
        meta = await self._proven_metadata(holders, key, claim)
        if meta is None or meta.share is not None:
            return None  # unreadable, or a share: `recover` rebuilds its file
        size = BlobRecord.from_bytes(
            key.owner, key.blob, claim.version, bytes.fromhex(claim.proof)
        ).size
        return FileEntry(meta.name, size, key.blob, meta.mtime, len(holders), False)

    async def _proven_metadata(
        self, holders: list[PeerSession], key: BlobKey, claim: wire.ListEntry
    ) -> Metadata | None:
        """The metadata in the header a peer holds, checked against the proven record."""
        record = BlobRecord.from_bytes(
            key.owner, key.blob, claim.version, bytes.fromhex(claim.proof)
        )
        for session in holders:
            try:
                reply = await PeerClient(session).head(key)
                raw = bytes.fromhex(reply.header)
                if blake3(raw).digest() != record.header_digest:
                    continue  # not the header the owner signed
                return open_metadata(self._owner.key, parse_header(raw))
            except (RemoteError, SessionClosed, CryptoError):
                continue
        return None

    async def _held_elsewhere(self, org: ReadKey, listings: Listings) -> list[FileEntry]:
        """Another org's files whose newest version only peers hold (this node has no
        key to check their claims with: a name is shown only if its header opens)."""
        newest: dict[str, wire.ListEntry] = {}
        for listing in listings.values():
            for entry in listing.values():
                if entry.blob not in newest or entry.version > newest[entry.blob].version:
                    newest[entry.blob] = entry
        sessions = {s.info.node_id: s for s in self._peers()}
        found = []
        for blob, entry in sorted(newest.items()):
            key = BlobKey(org.org_id, blob)
            if entry.deleted or not self._holdings.catalog.is_newer(key, entry.version):
                continue  # deleted, or held here (listed already)
            holders = [p for p, listing in listings.items() if listing.get(blob) == entry]
            file = await self._peer_file(
                [sessions[p] for p in holders if p in sessions], key, org.key, entry.version
            )
            if file is not None:
                found.append(replace(file, replicas=len(holders)))
        return found

    async def _peer_file(
        self, holders: list[PeerSession], key: BlobKey, org_key: OrgKey, version: int
    ) -> FileEntry | None:
        """A file's entry from the header a peer holds (its name is in the sealed metadata)."""
        for session in holders:
            try:
                reply = await PeerClient(session).head(key)
                header = parse_header(bytes.fromhex(reply.header))
                if (header.owner, header.blob, header.version) != (key.owner, key.blob, version):
                    continue
                meta = open_metadata(org_key, header)
                return FileEntry(
                    meta.name, plaintext_size(header, reply.size), key.blob, meta.mtime, 0, False
                )
            except (RemoteError, SessionClosed, CryptoError):
                continue
        return None

    async def recover(self) -> tuple[list[str], list[str]]:
        """Fetch back the newest version of every file of this org that peers hold.

        The newest version of a file is the ledger's, or a newer one a peer proves
        with this org's signature. A file whose newest version is a deletion stays
        deleted (the proven tombstone is kept here), and peers holding older
        versions are then brought up to date. Returns (names recovered, errors).
        """
        owner = self._owner
        recovered: list[str] = []
        errors: list[str] = []
        listings: Listings = {}
        sessions = {s.info.node_id: s for s in self._peers()}
        for peer, session in sessions.items():
            try:
                listings[peer] = await PeerClient(session).list_all(owner.node_id)
            except (RemoteError, SessionClosed) as e:
                errors.append(f"{session.info.org}: {e}")
        proven = self._proven(listings)
        shares = await self._shares(proven, sessions)
        for blob in sorted({*proven, *shares, *(e.blob for e in self._ledger.live())}):
            key = BlobKey(owner.node_id, blob)
            self._holdings.held(key)  # forgets a blob that went missing on disk
            written = self._ledger.get(blob)
            replicas = proven.get(blob, [])
            # A proven version of a share is one of its file's: the owner made it.
            claims = replicas + [(p, c) for p, c, _ in shares.get(blob, []) if not c.deleted]
            best = max((c for _, c in claims), key=lambda c: c.version, default=None)
            if written is not None and (best is None or written.version >= best.version):
                if not self._holdings.catalog.is_newer(key, written.version):
                    continue  # the newest is here
                if written.deleted:
                    await self._holdings.bury(owner.tombstone(blob, _claim(written)), owner.node_id)
                    continue
                version, name = written.version, written.name or blob[:16]
            elif best is not None:
                if not self._holdings.catalog.is_newer(key, best.version):
                    continue
                if best.deleted:
                    tomb = owner.tombstone(blob, best)
                    await self._holdings.bury(tomb, owner.node_id)
                    await self._ledger.record(LedgerEntry(blob, best.version, True, tomb.signature))
                    continue
                version, name = best.version, blob[:16]
            else:
                continue
            holders = [sessions[p] for p, c in replicas if c.version == version]
            restored = await self._restore(key, version, holders, errors)
            if restored is None:
                restored = await self._rebuild(key, version, shares.get(blob, []), sessions)
            if restored is not None:
                recovered.append(restored)
            else:
                errors.append(
                    f"{name}: its newest version is not on any connected peer "
                    "(older versions are not restored in its place)"
                )
        log.info(
            "recovered {count} files ({errors} errors)", count=len(recovered), errors=len(errors)
        )
        # Peers that missed changes while this node was down hear of them now.
        for session in self._peers():
            try:
                await self._sync.catch_up(session)
            except (RemoteError, SessionClosed) as e:
                errors.append(f"catching up {session.info.org}: {e}")
        return recovered, errors

    async def _restore(
        self, key: BlobKey, version: int, holders: list[PeerSession], errors: list[str]
    ) -> str | None:
        """Fetch ``version`` of one of this org's blobs from the first holder that has
        it; record it in the ledger; return the file's name."""
        for session in holders:
            try:
                header = await self._fetcher.into_store(session, key, self._owner.key, version)
            except (RemoteError, SessionClosed, DamagedBlob, CryptoError, TimeoutError) as e:
                errors.append(f"{key.blob[:16]} from {session.info.org}: {e}")
                continue
            return await self._restored(key, version, header)
        return None

    async def _rebuild(
        self,
        key: BlobKey,
        version: int,
        claims: list[tuple[str, wire.ListEntry, int]],
        sessions: dict[str, PeerSession],
    ) -> str | None:
        """Rebuild ``version`` of a file from the shares peers proved they hold (any
        K of them); record it in the ledger; return the file's name."""
        holders: dict[int, list[PeerSession]] = {}
        for peer, claim, index in claims:
            if claim.version == version and not claim.deleted and peer in sessions:
                holders.setdefault(index, []).append(sessions[peer])
        if not holders:
            return None
        header = await rebuild(
            self._owner, self._holdings, self._fetcher.clock, key.blob, version, holders
        )
        return None if header is None else await self._restored(key, version, header)

    async def _restored(self, key: BlobKey, version: int, header: BlobHeader) -> str:
        """A version of a file is back in the store: record it in the ledger."""
        held = self._holdings.catalog.get(key)
        meta = open_metadata(self._owner.key, header)
        if held is not None and held.version == version:
            proof = self._holdings.proof(key, held)
            record = BlobRecord.from_bytes(key.owner, key.blob, version, proof)
            await self._ledger.record(
                LedgerEntry(key.blob, version, False, proof, meta.name, record.size, meta.mtime)
            )
        return meta.name

    def _erasure_n(self) -> int:
        erasure = self._sync.placement.erasure
        return 0 if erasure is None else erasure.n

    async def _shares(
        self, proven: dict[str, list[tuple[str, wire.ListEntry]]], sessions: dict[str, PeerSession]
    ) -> dict[str, list[tuple[str, wire.ListEntry, int]]]:
        """Which proven claims are of erasure-coded shares, by file blob id: (peer,
        claim, share index). Removed from ``proven``: a share is not a file. Shares
        of the ledger's files are known by their ids; any other blob a peer proves
        is a share if its metadata (asked of a holder) says so."""
        n = self._erasure_n()
        ids = {share_id(e.blob, i): (e.blob, i) for e in self._ledger.live() for i in range(n)}
        written = {e.blob for e in self._ledger.live()}
        found: dict[str, list[tuple[str, wire.ListEntry, int]]] = {}
        for blob, claims in list(proven.items()):
            if blob in written:
                continue
            if blob not in ids:
                live = [(p, c) for p, c in claims if not c.deleted and p in sessions]
                if not live:
                    continue
                newest = max((c for _, c in live), key=lambda c: c.version)
                meta = await self._proven_metadata(
                    [sessions[p] for p, c in live if c == newest],
                    BlobKey(self._owner.node_id, blob),
                    newest,
                )
                if meta is None or meta.share is None:
                    continue
                ids[blob] = (self._owner.key.blob_id(meta.name), meta.share.index)
            file, index = ids[blob]
            found.setdefault(file, []).extend((p, c, index) for p, c in claims)
            del proven[blob]
        return found


def _claim(written: LedgerEntry) -> wire.ListEntry:
    return wire.ListEntry(written.blob, written.version, written.deleted, written.proof.hex())
