"""What the node does with files: put, get, delete, list, recover, and serving peers.

`Files` is the facade the API, the CLI's requests, the scrub and the metrics use;
each part lives in its own module and is handed only what it works with:

- `holdings`: what is held, the catalog and the disk kept in step;
- `put`: an upload encrypted once and streamed here and to every live peer;
- `get`: downloads, from the local copy or a peer's; `fetch`: blobs from peers;
- `delete`: the owner's signed deletions; `recover`: listings across peers, recovery;
- `serve`: what this node answers to its peers; `sync`: anti-entropy and relay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from ..catalog import Catalog
from ..crypto import file_key, share_id
from ..grants import Grant
from ..identity import KnownOrg, KnownOrgs
from ..keys import ReadKey
from ..ledger import Ledger
from ..peers import PeerRegistry
from ..session import PeerSession
from ..space import SpaceAccount
from ..store import BlobKey, BlobStore
from .audit import Auditor
from .collect import COLLECT_AFTER, Collector, Horizons
from .delete import Remover
from .errors import DamagedBlob, FileNotFound, NewestUnavailable, PutInProgress, UnknownPeer
from .fetch import Clock, Fetcher
from .get import Download, Reader
from .holdings import Holdings, read_header
from .owner import Owner
from .placement import Placement, Redundancy
from .put import PeerOutcome, PutResult, Upload, recipients
from .recover import FileEntry, Recovery
from .serve import Server
from .shares import rebuild
from .sync import Sync

log = Logger()

__all__ = [
    "DamagedBlob",
    "Download",
    "FileEntry",
    "FileNotFound",
    "Files",
    "NewestUnavailable",
    "Owner",
    "PeerOutcome",
    "Placement",
    "PutInProgress",
    "PutResult",
    "Redundancy",
    "UnknownPeer",
    "Upload",
]


class Files:
    """This org's files and the replicas this node holds for others."""

    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        ledger: Ledger,
        peers: PeerRegistry,
        clock: Clock,
        space: SpaceAccount,
        known: KnownOrgs,
        relay: bool = True,
        audit_sample: int = 8,
        redundancy: Redundancy | None = None,
        repair_after: float = 3600.0,
        collect_after: float = COLLECT_AFTER,
    ) -> None:
        self.owner = owner
        self.holdings = holdings
        self.ledger = ledger
        self.peers = peers
        self.space = space
        self._known = known
        self._uploads: dict[BlobKey, Upload] = {}
        self._totals: tuple[tuple[int, int, int], tuple[int, dict[str, int]]] | None = None
        self.fetcher = Fetcher(holdings, peers.live, clock)
        self.placement = Placement(redundancy or Redundancy(), peers.known, repair_after)
        # Placed copies go only where the owner puts them: a node that passed other
        # orgs' blobs on to every peer would undo that.
        relay = relay and self.placement.everywhere
        self.sync = Sync(owner, holdings, peers.live, relay, self.placement, clock.seconds)
        # Every node met may hold this org's blobs (and pass them on): kept in
        # known_orgs.json from its first session on.
        met = lambda: known.ids() | set(peers.known())  # noqa: E731
        self.horizons = Horizons(holdings, met)
        self.collector = Collector(
            owner, holdings, ledger, self.horizons, peers.live, met, collect_after
        )
        self.sync.before_namespace = self.horizons.exchange
        self.sync.listed = self.collector.listed
        self.server = Server(owner.node_id, holdings, space, known, self.sync, self.horizons)
        self._reader = Reader(owner, holdings, ledger, self.fetcher, clock, self.rebuild)
        self._remover = Remover(owner, holdings, ledger, peers.live, self.placement, self.collector)
        self.auditor = Auditor(
            owner, holdings, peers.live, self._resend, self.placement, audit_sample
        )
        self._recovery = Recovery(
            owner, holdings, ledger, peers.live, self.fetcher, self.sync, self.auditor
        )
        self.open_download = self._reader.open_download
        self.open_granted = self._reader.open_granted
        self.delete = self._remover.delete
        self.recover = self._recovery.recover
        self.damaged = holdings.damaged

    def sync_all(self) -> None:
        """Compare with every live peer, and collect the deletions all have confirmed."""
        self.sync.sync_all()
        self.collector.run().addErrback(
            lambda f: log.warn("collecting tombstones failed: {error}", error=f.getErrorMessage())
        )

    @property
    def node_id(self) -> str:
        return self.owner.node_id

    @property
    def relay(self) -> bool:
        return self.sync.relay

    @property
    def catalog(self) -> Catalog:
        return self.holdings.catalog

    @property
    def store(self) -> BlobStore:
        return self.holdings.store

    async def repair(self, key: BlobKey, version: int) -> str | None:
        """A good copy of a damaged blob (``version`` or newer): a peer's, or (this
        org's, with erasure coding) rebuilt from shares. Returns where it came from."""
        source = await self.fetcher.repair(key, version)
        if source is None and key.owner == self.node_id and await self.rebuild(key, version):
            return "shares"
        return source

    async def rebuild(self, key: BlobKey, version: int) -> bool:
        """With erasure coding, ``version`` of this org's file rebuilt here from K of
        the shares peers hold (those known to hold each asked first, then the rest)."""
        erasure = self.placement.erasure
        if erasure is None or key.owner != self.node_id:
            return False
        live: Sequence[PeerSession] = self.peers.live()
        holders = {}
        for index in range(erasure.n):
            known = set(self.placement.holders(share_id(key.blob, index), version))
            holders[index] = sorted(live, key=lambda s: s.info.node_id not in known)
        header = await rebuild(
            self.owner, self.holdings, self.fetcher.clock, key.blob, version, holders
        )
        if header is not None:
            log.info("rebuilt {blob} from shares", blob=key.blob)
        return header is not None

    def _resend(self, session: PeerSession, key: BlobKey) -> None:
        """Send a blob again to a peer that could not prove it holds it."""
        entry = self.catalog.get(key)
        if entry is not None and not entry.deleted:
            Deferred.fromCoroutine(self.sync.offer(session, key, entry))

    async def list_files(self, reader: ReadKey | None = None, ask: bool = True) -> list[FileEntry]:
        """This org's files (or, with ``reader``, another org's), with their copies
        (``ask``: as every live peer lists them now; else as this node knows them)."""
        entries = await self._recovery.list_files(reader, ask)
        if reader is None:
            # With erasure coding, the shares wanted; else the copies, this one included.
            erasure = self.placement.erasure
            wanted = 1 + self.placement.wanted() if erasure is None else erasure.n
            entries = [dataclasses.replace(e, wanted=wanted) for e in entries]
        return entries

    def _own_current(self) -> dict[str, tuple[int, int]]:
        """This org's live blobs here: blob -> (version, size)."""
        return {
            blob: (entry.version, entry.size)
            for blob, entry in self.catalog.entries(self.node_id)
            if not entry.deleted
        }

    def _copies(self) -> tuple[int, dict[str, int]]:
        """Files under-replicated, and bytes each peer holds of this org: computed
        again only once this org's files, what peers hold or the copies wanted
        changed, so that the page's poll and the metrics' scrape cost nothing
        when nothing did (a walk of every file of this org when something did)."""
        key = (
            self.catalog.changes(self.node_id),
            self.placement.generation,
            self.placement.wanted(),
        )
        if self._totals is None or self._totals[0] != key:
            current = self._own_current()
            under = self.placement.under_replicated((b, v) for b, (v, _) in current.items())
            self._totals = (key, (under, self.placement.held_by(current)))
        return self._totals[1]

    def under_replicated(self) -> int:
        """This org's files with fewer peer copies known than it wants."""
        return self._copies()[0]

    def held_for_us(self) -> dict[str, int]:
        """Bytes of this org's files each peer is known to hold, by node id."""
        return dict(self._copies()[1])

    def usage(self) -> dict[str, int]:
        return self.catalog.usage()

    def begin_put(self, name: str, size: int | None, upstream: IPushProducer | None) -> Upload:
        """Start a put (ValueError for a bad name, PutInProgress for a name being put)."""
        key = self.owner.key_for(name)  # validates the name
        if key in self._uploads:
            # Two versions racing to the disk could leave the older one there.
            raise PutInProgress(f"a put of {name!r} is in progress already")
        sessions, shares = recipients(self.placement, key.blob, self.peers.live())
        upload = Upload(
            self.owner,
            self.holdings,
            self.ledger,
            self.auditor,
            sessions,
            name,
            size,
            upstream,
            self._put_ended,
            self.placement,
            shares,
        )
        self._uploads[key] = upload
        return upload

    def _put_ended(self, upload: Upload) -> None:
        if self._uploads.get(upload.key) is upload:
            del self._uploads[upload.key]

    async def share(self, name: str, to: str, owner_org: str) -> Grant:
        """A grant of this org's file ``name`` (as it is now) to the org ``to``."""
        key = self.owner.key_for(name)
        f = self.store.open(key)
        if f is None:
            raise FileNotFound(name)
        with f:
            header = read_header(f)
        recipient = self._known_org(to)
        return Grant.issue(
            self.owner.signer,
            owner_org,
            file_key(self.owner.key, header),
            name,
            recipient.org_id,
            bytes.fromhex(recipient.box_key),
        )

    def _known_org(self, spec: str) -> KnownOrg:
        """The org named (or with that node id, or a 4+ char prefix) among those met."""
        matches = {k.org_id: k for k in self._known.find(spec)}
        if len(matches) == 1:
            return next(iter(matches.values()))
        if matches:
            raise UnknownPeer(f"{spec!r} matches {len(matches)} orgs: give more of its node id")
        raise UnknownPeer(
            f"no org {spec!r} among the peers this node has met: a grant is encrypted "
            "to the key an org's node announces when it connects"
        )
