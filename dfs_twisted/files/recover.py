"""Listing across peers (`ls`, files only peers hold) and `recover` after a loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from twisted.logger import Logger

from .. import wire
from ..crypto import CryptoError, OrgKey, Tombstone, open_metadata, parse_header, plaintext_size
from ..keys import ReadKey
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .errors import DamagedBlob
from .fetch import Fetcher
from .holdings import Holdings, read_header
from .owner import Owner
from .sync import Sync

log = Logger()


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    blob: str
    mtime: int
    replicas: int
    here: bool = True  # held by this node (else only by peers: `recover` brings it back)


class Recovery:
    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        peers: Callable[[], Sequence[PeerSession]],
        fetcher: Fetcher,
        sync: Sync,
    ) -> None:
        self._owner = owner
        self._holdings = holdings
        self._peers = peers
        self._fetcher = fetcher
        self._sync = sync

    async def peer_listings(self, owner: str) -> dict[str, dict[str, wire.ListEntry]]:
        """What each live peer holds of ``owner``'s namespace, keyed by peer node id."""
        listings: dict[str, dict[str, wire.ListEntry]] = {}
        for session in self._peers():
            try:
                listings[session.info.node_id] = await PeerClient(session).list_all(owner)
            except (RemoteError, SessionClosed) as e:
                log.warn("could not list {org}: {error}", org=session.info.org, error=str(e))
        return listings

    async def list_files(self, reader: ReadKey | None = None) -> list[FileEntry]:
        """This org's files held here (or, with ``reader``, another org's)."""
        org = reader or self._owner.read_key
        listings = await self.peer_listings(org.org_id)
        store = self._holdings.store
        entries = []
        for blob, held in self._holdings.catalog.entries(org.org_id):
            if held.deleted:
                continue
            key = BlobKey(org.org_id, blob)
            f = store.open(key)
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
            replicas = 1 + sum(
                (theirs := listing.get(blob)) is not None
                and not theirs.deleted
                and theirs.version == held.version
                for listing in listings.values()
            )
            entries.append(FileEntry(meta.name, size, blob, meta.mtime, replicas))
        entries += await self._held_elsewhere(org, listings)
        return sorted(entries, key=lambda e: e.name)

    async def _held_elsewhere(
        self, org: ReadKey, listings: dict[str, dict[str, wire.ListEntry]]
    ) -> list[FileEntry]:
        """Files whose newest version only peers hold (this node lost it, or never had it)."""
        newest: dict[str, list[wire.ListEntry]] = {}
        for listing in listings.values():
            for entry in listing.values():
                same = newest.setdefault(entry.blob, [entry])
                if entry.version > same[0].version:
                    newest[entry.blob] = [entry]
                elif entry is not same[0] and entry.version == same[0].version:
                    same.append(entry)
        sessions = {s.info.node_id: s for s in self._peers()}
        found = []
        for blob, versions in sorted(newest.items()):
            key = BlobKey(org.org_id, blob)
            if versions[0].deleted or not self._holdings.catalog.is_newer(key, versions[0].version):
                continue  # deleted, or held here (listed already)
            holders = [p for p, listing in listings.items() if listing.get(blob) in versions]
            file = await self._peer_file(
                [sessions[p] for p in holders if p in sessions], key, org.key, versions[0].version
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

        A file whose newest version on any peer is a deletion stays deleted (its
        tombstone is signed again here), and peers holding older versions are
        then brought up to date. Returns (names recovered, errors).
        """
        owner = self._owner
        recovered: list[str] = []
        errors: list[str] = []
        newest: dict[str, tuple[wire.ListEntry, list[PeerSession]]] = {}
        for session in self._peers():
            try:
                listing = await PeerClient(session).list_all(owner.node_id)
            except (RemoteError, SessionClosed) as e:
                errors.append(f"{session.info.org}: {e}")
                continue
            for entry in listing.values():
                best = newest.get(entry.blob)
                if best is None or entry.version > best[0].version:
                    newest[entry.blob] = (entry, [session])
                elif entry.version == best[0].version:
                    best[1].append(session)
        for blob, (entry, sessions) in sorted(newest.items()):
            key = BlobKey(owner.node_id, blob)
            self._holdings.held(key)
            if not self._holdings.catalog.is_newer(key, entry.version):
                continue
            if entry.deleted:
                self._holdings.bury(
                    Tombstone.sign(owner.signer, blob, entry.version), owner.node_id
                )
                continue
            for session in sessions:
                try:
                    header = await self._fetcher.into_store(session, key, owner.key)
                    recovered.append(open_metadata(owner.key, header).name)
                    break
                except (RemoteError, SessionClosed, DamagedBlob, CryptoError) as e:
                    errors.append(f"{blob[:16]} from {session.info.org}: {e}")
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
