"""Anti-entropy and relay: peers are brought up to date with what this node holds.

When a session comes up and every `--sync-period`, this node compares digests of
each namespace it holds with the peer's and, where they differ, sends each blob or
tombstone the peer lacks or holds an older version of. The digests form a tree
per namespace (merkle.py): only the parts that differ are listed, so two nodes
that differ by one blob exchange a few small messages, not their listings. With
relay on, changes of other orgs received from one peer are passed on to the others.
With --replicas N, this org's namespace is compared with the part each peer should
hold (placement.py), and copies beyond that are released.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import merkle, wire
from ..catalog import Entry
from ..crypto import CryptoError, Release, open_metadata, share_id
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .holdings import Holdings, read_header
from .owner import Owner
from .placement import REFUSAL_MEMORY, ROOM_CODES, Placement
from .shares import ShareMaker, share_pieces

log = Logger()

# A peer holding at most this many entries of a namespace is listed whole when the
# roots differ: four LIST pages, no more round trips than descending the tree.
LIST_ALL_BELOW = 4 * wire.MAX_LIST_PAGE

# A peer that answered a relayed change of an owner with "have" or "busy" (it held
# it, or was receiving it already) gets that owner's changes another way, from
# the owner itself most likely: the next relays of that owner's changes to it are
# held back this long, then one goes again and its answer decides anew. In a full
# mesh that is every relay (each put cost every holder a STORE exchange with every
# other holder); what a hold-back misses, anti-entropy (--sync-period) sends.
RELAY_HOLD_BACK = 30.0


class Sync:
    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        peers: Callable[[], Sequence[PeerSession]],
        relay: bool,
        placement: Placement,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owner = owner
        self._node_id = owner.node_id
        self._holdings = holdings
        self._peers = peers
        self.relay = relay
        self.placement = placement
        self._syncing: set[PeerSession] = set()
        self.list_all_below = LIST_ALL_BELOW
        self._clock = clock
        # (peer, owner) -> until when relays of that owner's changes to it wait.
        self._held_back: dict[tuple[str, str], float] = {}
        # Per peer, the state of this org's namespace (and of placement) when the
        # peer's digest of it last matched, and that digest: while both stay the
        # same, a sync neither walks the namespace again nor learns it again.
        self._matched: dict[str, tuple[tuple[object, ...], tuple[str, int]]] = {}
        # Orgs met that place their files on chosen peers: never relayed.
        self.placed_owners: set[str] = set()
        # Set by files.collect: horizons exchanged before a namespace is compared, and
        # what a peer listed of this org's namespace.
        self.before_namespace: Callable[[PeerSession, str], Awaitable[object]] = _nothing
        self.listed: Callable[[str, dict[str, wire.ListEntry]], object] = lambda peer, theirs: None

    def _unchanged(self, peer: str, state: tuple[object, ...], theirs: tuple[str, int]) -> bool:
        return self._matched.get(peer) == (state, theirs)

    def sync_all(self) -> None:
        """Compare with every live peer (periodically: a refused or failed transfer
        while connected, a quota freed, is put right without waiting for a reconnect)."""
        for session in self._peers():
            self.sync(session)

    def met(self, session: PeerSession) -> None:
        """A session with a peer came up: what it held is learnt afresh, then it is
        caught up."""
        self.placement.forget_peer(session.info.node_id)
        self._matched.pop(session.info.node_id, None)
        if session.info.placed:
            self.placed_owners.add(session.info.node_id)
        else:
            self.placed_owners.discard(session.info.node_id)
        self.sync(session)

    def sync(self, session: PeerSession) -> None:
        """Run catch_up for a peer in the background, one at a time per peer."""
        if session in self._syncing:
            return
        self._syncing.add(session)
        d = Deferred.fromCoroutine(self.catch_up(session))
        d.addErrback(
            lambda f: log.warn(
                "catching up {peer} failed: {error}",
                peer=session.info.org,
                error=f.getErrorMessage(),
            )
        )
        d.addBoth(lambda _: self._syncing.discard(session))

    async def catch_up(self, session: PeerSession) -> int:
        """Bring a peer up to date (it just connected, or periodically); return the changes.

        For this org's namespace, and (relaying) for every other org this node
        holds except the peer's own: compare digests, and when they differ send
        each blob or tombstone the peer lacks or holds an older version of.
        Only ever pushes: a node that lost its store pushes nothing and deletes
        nothing, so `recover` can still bring everything back.
        """
        peer = session.info.node_id
        catalog = self._holdings.catalog
        owners = [self._node_id]
        if self.relay:
            skip = {self._node_id, peer, *self.placed_owners}
            owners += [o for o in catalog.owners() if o not in skip]
        sent = 0
        for owner in owners:
            await self.before_namespace(session, owner)
            own = owner == self._node_id
            if own and not self.placement.everywhere:
                changes = await self._catch_up_placed(session)
            else:
                changes = await self._catch_up_namespace(session, owner)
            if changes is None:
                return sent  # the session closed
            sent += changes
        if sent:
            log.info("caught up {org}: sent {sent} changes", org=session.info.org, sent=sent)
        return sent

    async def _catch_up_namespace(self, session: PeerSession, owner: str) -> int | None:
        """Send a peer what it lacks of a namespace it holds all of: compare the
        roots of the digest trees, descend where they differ, list only the leaves
        that differ (merkle.py). None if the session closed."""
        peer = session.info.node_id
        catalog = self._holdings.catalog
        client = PeerClient(session)
        own = owner == self._node_id
        theirs_root = await client.digest(owner)
        if theirs_root == catalog.digest(owner):
            state = (catalog.changes(owner),)
            if own and not self._unchanged(peer, state, theirs_root):
                live = {b: e.version for b, e in catalog.entries(owner) if not e.deleted}
                self.placement.learn(peer, live)
                self._matched[peer] = (state, theirs_root)
            return 0
        if theirs_root[1] <= self.list_all_below:
            # A small namespace there: its whole listing takes no more round trips
            # than descending the tree (and much less than 20 KiB of child digests).
            prefixes, theirs = [""], await client.list_all(owner)
        else:
            found = await self._differing(client, owner)
            prefixes = [prefix for prefix, _ in found]
            theirs = {}
            for prefix, count in found:
                if count:
                    theirs.update(await client.list_prefix(owner, prefix, count))
        if own:
            self.learn(peer, theirs, prefixes)
        sent = 0
        for prefix in prefixes:
            for blob, entry in catalog.entries(owner, prefix):
                other = theirs.get(blob)
                if other is not None and other.version >= entry.version:
                    continue
                if session.closed:
                    return None
                sent += await self.offer(session, BlobKey(owner, blob), entry)
        return sent

    async def _differing(self, client: PeerClient, owner: str) -> list[tuple[str, int]]:
        """The prefixes where the peer's tree differs from this node's and this node
        holds something, each with how many entries the peer says it holds there
        (a leaf it holds some of is listed; else everything there is sent). The
        peer's digests are claims: a false one only makes this node list more, or
        send the peer less of what it lacks."""
        catalog = self._holdings.catalog
        found: list[tuple[str, int]] = []
        pending = [""]
        while pending:
            prefix = pending.pop(0)
            theirs = await client.children(owner, prefix)
            for byte, digest, count in catalog.children(owner, prefix):
                child = f"{prefix}{byte:02x}"
                other = theirs.get(byte)
                if other == (digest, count):
                    continue
                if other is None:
                    found.append((child, 0))
                elif len(child) == merkle.LEAF_HEX:
                    found.append((child, max(other[1], 1)))
                else:
                    pending.append(child)
        return found

    async def _catch_up_placed(self, session: PeerSession) -> int | None:
        """This org's namespace, placed on some peers (--replicas N): compare with
        the part a peer should hold, all of it (the tree is of what it holds, all
        of which a target need not hold); then release its surplus copies."""
        peer = session.info.node_id
        client = PeerClient(session)
        owner = self._node_id
        available = self.placement.available()
        theirs_root = await client.digest(owner)
        # What the peer should hold depends on this org's files, on the peers
        # available, and on refusals (remembered for REFUSAL_MEMORY).
        state = (
            self._holdings.catalog.changes(owner),
            tuple(sorted(available)),
            self.placement.refusals,
            int(time.time() // REFUSAL_MEMORY),
        )
        if self._unchanged(peer, state, theirs_root):
            return 0
        due = self._due(peer, available)
        digest, count = merkle.digest_of((b, e.version, e.deleted) for b, (e, _) in due.items())
        if theirs_root == (digest.hex(), count):
            self.placement.learn(peer, {b: e.version for b, (e, _) in due.items() if not e.deleted})
            self._matched[peer] = (state, theirs_root)
            return 0
        theirs = await client.list_all(owner)
        self.learn(peer, theirs)
        sent = 0
        for blob, (entry, share) in due.items():
            if (other := theirs.get(blob)) is None or other.version < entry.version:
                if session.closed:
                    return None
                if share is None:
                    sent += await self.offer(session, BlobKey(owner, blob), entry)
                else:
                    sent += await self.offer_share(session, *share, entry)
        await self._release_surplus(session, theirs, available)
        return sent

    def _due(
        self, peer: str, available: list[str]
    ) -> dict[str, tuple[Entry, tuple[str, int] | None]]:
        """What a peer should hold of this org's namespace: the blobs it is a target
        for (with erasure, the share of each it should hold: its id -> the file's blob
        and the share's index), and every tombstone."""
        due: dict[str, tuple[Entry, tuple[str, int] | None]] = {}
        for blob, entry in self._holdings.catalog.entries(self._node_id):
            if entry.deleted:
                due[blob] = (entry, None)
            elif self.placement.erasure is not None:
                index = self.placement.share_of(peer, blob, available)
                if index is not None:
                    due[share_id(blob, index)] = (entry, (blob, index))
            elif self.placement.is_target(peer, blob, available):
                due[blob] = (entry, None)
        return due

    async def offer(self, session: PeerSession, key: BlobKey, entry: Entry) -> int:
        """Send one blob or tombstone to a peer; 1 if the peer took it."""
        refused = await self._attempt(session, key, self._send(session, key, entry))
        return 1 if refused is None else 0

    async def _send(self, session: PeerSession, key: BlobKey, entry: Entry) -> str | None:
        client = PeerClient(session)
        if entry.deleted:
            tomb = self._holdings.tombstone(key)
            if tomb is None:
                return "gone"
            await client.delete(tomb)
            return None
        f = self._holdings.store.open(key)
        if f is None:
            return "gone"  # deleted meanwhile
        blob = self._holdings.disk.reader(f, os.fstat(f.fileno()).st_size)
        try:
            await client.push(key, entry.version, blob)
        finally:
            blob.close()
        if key.owner == self._node_id:
            self.placement.holds(session.info.node_id, key.blob, entry.version)
        return None

    async def offer_share(self, session: PeerSession, blob: str, index: int, entry: Entry) -> int:
        """Make share ``index`` of this org's file ``blob`` from the blob here and send
        it to a peer; 1 if the peer took it."""
        share = BlobKey(self._node_id, share_id(blob, index))
        sending = self._send_share(session, blob, index, entry)
        return 1 if await self._attempt(session, share, sending) is None else 0

    async def _send_share(
        self, session: PeerSession, blob: str, index: int, entry: Entry
    ) -> str | None:
        erasure = self.placement.erasure
        assert erasure is not None
        f = self._holdings.store.open(BlobKey(self._node_id, blob))
        if f is None:
            return "gone"  # deleted meanwhile
        share = BlobKey(self._node_id, share_id(blob, index))
        with f:
            header = read_header(f)
            meta = open_metadata(self._owner.key, header)
            if header.version != entry.version:
                return "gone"  # replaced meanwhile: the next sync sends the new one
            f.seek(0)
            maker = ShareMaker(self._owner, erasure, meta.name, header.version, meta.mtime, [index])
            size = maker.announced(0, os.fstat(f.fileno()).st_size)
            await PeerClient(session).send(share, header.version, size, share_pieces(maker, f))
        self.placement.holds(session.info.node_id, share.blob, entry.version)
        return None

    async def _attempt(
        self, session: PeerSession, key: BlobKey, send: Awaitable[str | None]
    ) -> str | None:
        """Send ``key`` to a peer: None if the peer took it, else why not (the code
        it refused with, "gone" or "failed"; a failure is logged)."""
        try:
            return await send
        except RemoteError as e:
            if key.owner == self._node_id and e.code in ROOM_CODES:
                self.placement.refused(session.info.node_id, key.blob)
            if e.code in ("have", "busy", "not_found"):
                return e.code
            # Out of room or of rate there is expected, and retried each sync: not a warning.
            level = log.info if e.code in ("quota", "disk_full", "slow_down") else log.warn
            level(
                "{org} refused {blob}: {error}", org=session.info.org, blob=key.blob, error=str(e)
            )
        except (SessionClosed, CryptoError) as e:
            log.warn(
                "could not send {blob} to {org}: {error}",
                blob=key.blob,
                org=session.info.org,
                error=str(e),
            )
        return "failed"

    def relay_change(self, source: PeerSession, key: BlobKey, entry: Entry) -> None:
        """Pass a change received from ``source`` on to the other live peers, but
        those that get this owner's changes another way (RELAY_HOLD_BACK)."""
        if not self.relay or key.owner in self.placed_owners:
            return
        now = self._clock()
        for session in self._peers():
            peer = session.info.node_id
            if session is source or peer == key.owner:
                continue
            if self._held_back.get((peer, key.owner), now) > now:
                continue
            Deferred.fromCoroutine(self._relay(session, key, entry))

    async def _relay(self, session: PeerSession, key: BlobKey, entry: Entry) -> None:
        refused = await self._attempt(session, key, self._send(session, key, entry))
        held_back = (session.info.node_id, key.owner)
        if refused in ("have", "busy"):
            if held_back not in self._held_back and len(self._held_back) >= 4096:
                self._held_back.clear()  # forgetting costs only relays again
            self._held_back[held_back] = self._clock() + RELAY_HOLD_BACK
        elif refused is None:
            self._held_back.pop(held_back, None)

    def learn(
        self, peer: str, theirs: dict[str, wire.ListEntry], prefixes: Sequence[str] = ("",)
    ) -> None:
        """What a peer listed of this org's namespace (of ``prefixes`` of it): the
        versions this org proves."""
        self.listed(peer, theirs)
        newest = self._holdings.catalog.newest(self._node_id)
        self.placement.learn(
            peer,
            {
                blob: claim.version
                for blob, claim in theirs.items()
                if not claim.deleted and self._owner.proves(blob, claim, newest)
            },
            prefixes,
        )

    async def _release_surplus(
        self, session: PeerSession, theirs: dict[str, wire.ListEntry], available: list[str]
    ) -> None:
        """Let a peer drop the copies it holds beyond their blobs' targets."""
        peer = session.info.node_id
        shares = self._shares(theirs) if self.placement.erasure is not None else {}
        for blob, claim in theirs.items():
            if claim.deleted:
                continue
            if blob in shares:
                # Any version of a share held beside the peer whose slot it is, once
                # that one holds the current version.
                placed = self.placement.share_placed(*shares[blob], available)
                if placed is None or placed == peer:
                    continue
            elif peer not in self.placement.surplus(blob, claim.version, available):
                continue
            release = Release.sign(self._owner.signer, blob, claim.version, peer)
            try:
                await PeerClient(session).release(release)
            except (RemoteError, SessionClosed) as e:
                log.info("{org} kept a surplus copy: {error}", org=session.info.org, error=str(e))
                return
            self.placement.lost(peer, blob)
            log.info("released {blob} on {org}", blob=blob, org=session.info.org)

    def _shares(self, theirs: dict[str, wire.ListEntry]) -> dict[str, tuple[str, int, int]]:
        """Which of the blob ids a peer listed are shares of this org's current files:
        share id -> (file blob, index, current version)."""
        erasure = self.placement.erasure
        assert erasure is not None
        found = {}
        for blob, entry in self._holdings.catalog.entries(self._node_id):
            if entry.deleted:
                continue
            for index in range(erasure.n):
                if (share := share_id(blob, index)) in theirs:
                    found[share] = (blob, index, entry.version)
        return found


async def _nothing(session: PeerSession, owner: str) -> None:
    return None
