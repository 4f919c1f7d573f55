"""Anti-entropy and relay: peers are brought up to date with what this node holds.

When a session comes up and every `--sync-period`, this node compares digests of
each namespace it holds with the peer's and, where they differ, sends each blob or
tombstone the peer lacks or holds an older version of. With relay on, changes of
other orgs received from one peer are passed on to the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import wire
from ..catalog import Entry, digest_of
from ..crypto import CryptoError, Release
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .holdings import Holdings
from .owner import Owner
from .placement import ROOM_CODES, Placement

log = Logger()


class Sync:
    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        peers: Callable[[], Sequence[PeerSession]],
        relay: bool,
        placement: Placement,
    ) -> None:
        self._owner = owner
        self._node_id = owner.node_id
        self._holdings = holdings
        self._peers = peers
        self.relay = relay
        self.placement = placement
        self._syncing: set[PeerSession] = set()

    def sync_all(self) -> None:
        """Compare with every live peer (periodically: a refused or failed transfer
        while connected, a quota freed, is put right without waiting for a reconnect)."""
        for session in self._peers():
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
        client = PeerClient(session)
        owners = [self._node_id]
        if self.relay:
            owners += [o for o in catalog.owners() if o not in (self._node_id, peer)]
        sent = 0
        for owner in owners:
            own = owner == self._node_id
            placing = own and not self.placement.everywhere
            # What the peer should hold: all of it, or (placing copies) this org's
            # blobs it is a target for, and every tombstone.
            due = [
                (blob, entry)
                for blob, entry in catalog.entries(owner)
                if not placing or entry.deleted or self.placement.is_target(peer, blob)
            ]
            expected = digest_of(due) if placing else catalog.digest(owner)
            if await client.digest(owner) == expected:
                if own:
                    self.placement.learn(peer, {b: e.version for b, e in due if not e.deleted})
                continue
            theirs = await client.list_all(owner)
            if own:
                self._learn(peer, theirs)
            stale = [
                (blob, entry)
                for blob, entry in due
                if (other := theirs.get(blob)) is None or other.version < entry.version
            ]
            for blob, entry in stale:
                if session.closed:
                    return sent
                sent += await self.offer(session, BlobKey(owner, blob), entry)
            if own:
                await self._release_surplus(session, theirs)
        if sent:
            log.info("caught up {org}: sent {sent} changes", org=session.info.org, sent=sent)
        return sent

    async def offer(self, session: PeerSession, key: BlobKey, entry: Entry) -> int:
        """Send one blob or tombstone to a peer; 1 if the peer took it."""
        client = PeerClient(session)
        try:
            if entry.deleted:
                tomb = self._holdings.tombstone(key)
                if tomb is None:
                    return 0
                await client.delete(tomb)
            else:
                f = self._holdings.store.open(key)
                if f is None:
                    return 0  # deleted meanwhile
                with f:
                    await client.push(key, entry.version, f, os.fstat(f.fileno()).st_size)
                if key.owner == self._node_id:
                    self.placement.holds(session.info.node_id, key.blob, entry.version)
            return 1
        except RemoteError as e:
            if key.owner == self._node_id and e.code in ROOM_CODES:
                self.placement.refused(session.info.node_id, key.blob)
            if e.code in ("have", "busy", "not_found"):
                return 0
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
        return 0

    def relay_change(self, source: PeerSession, key: BlobKey, entry: Entry) -> None:
        """Pass a change received from ``source`` on to the other live peers."""
        if not self.relay:
            return
        for session in self._peers():
            if session is source or session.info.node_id == key.owner:
                continue
            Deferred.fromCoroutine(self.offer(session, key, entry))

    def _learn(self, peer: str, theirs: dict[str, wire.ListEntry]) -> None:
        """What a peer listed of this org's namespace: the versions this org proves."""
        newest = self._holdings.catalog.newest(self._node_id)
        self.placement.learn(
            peer,
            {
                blob: claim.version
                for blob, claim in theirs.items()
                if not claim.deleted and self._owner.proves(blob, claim, newest)
            },
        )

    async def _release_surplus(
        self, session: PeerSession, theirs: dict[str, wire.ListEntry]
    ) -> None:
        """Let a peer drop the copies it holds beyond their blobs' targets."""
        peer = session.info.node_id
        for blob, claim in theirs.items():
            if claim.deleted or peer not in self.placement.surplus(blob, claim.version):
                continue
            release = Release.sign(self._owner.signer, blob, claim.version, peer)
            try:
                await PeerClient(session).release(release)
            except (RemoteError, SessionClosed) as e:
                log.info("{org} kept a surplus copy: {error}", org=session.info.org, error=str(e))
                return
            self.placement.lost(peer, blob)
            log.info("released {blob} on {org}", blob=blob, org=session.info.org)
