"""The owner's delete: a signed tombstone here and on every live peer."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from twisted.logger import Logger

from ..crypto import Tombstone, share_id
from ..ledger import Ledger, LedgerEntry
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from .collect import Collector
from .errors import FileNotFound
from .holdings import Holdings
from .owner import Owner
from .placement import Placement
from .put import PeerOutcome

log = Logger()


class Remover:
    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        ledger: Ledger,
        peers: Callable[[], Sequence[PeerSession]],
        placement: Placement,
        collector: Collector | None = None,
    ) -> None:
        self._owner = owner
        self._holdings = holdings
        self._ledger = ledger
        self._peers = peers
        self._placement = placement
        self._collector = collector

    async def delete(self, name: str) -> tuple[bool, list[PeerOutcome]]:
        """Remove here and on every live peer, leaving a signed tombstone everywhere.

        Returns whether this node held the file and what each peer said;
        FileNotFound if neither this node nor any live peer holds it.
        """
        started = time.monotonic()
        key = self._owner.key_for(name)
        held = self._holdings.catalog.get(key)
        here = held is not None and not held.deleted
        written = self._ledger.get(key.blob)
        live = written is not None and not written.deleted
        if not here and not live and not await self._held_by_a_peer(name):
            raise FileNotFound(name)
        version = self._holdings.next_version(key.owner, self._ledger.newest)
        tomb = Tombstone.sign(self._owner.signer, key.blob, version)
        # With erasure coding, each share is a blob of its own: a tombstone each.
        erasure = self._placement.erasure
        shares = [] if erasure is None else [share_id(key.blob, i) for i in range(erasure.n)]
        tombs = [tomb, *(Tombstone.sign(self._owner.signer, s, version) for s in shares)]
        for each in tombs:
            await self._holdings.bury(each, key.owner)
        await self._ledger.record(LedgerEntry(key.blob, version, True, tomb.signature))
        for blob in (key.blob, *shares):
            self._placement.forget(blob)
        if self._collector is not None:
            self._collector.deleted(tomb)
        outcomes = []
        for session in self._peers():
            peer = session.info
            try:
                for each in tombs:
                    await PeerClient(session).delete(each)
                outcomes.append(PeerOutcome(peer.org, peer.node_id, True))
                if self._collector is not None:
                    self._collector.acked(peer.node_id, tomb)
            except (RemoteError, SessionClosed) as e:
                outcomes.append(PeerOutcome(peer.org, peer.node_id, False, str(e)))
        log.info(
            "delete {blob}: held here {here}, on {removed} of {peers} peers, {seconds:.2f}s",
            blob=key.blob,
            here=here,
            removed=sum(o.ok for o in outcomes),
            peers=len(outcomes),
            seconds=time.monotonic() - started,
        )
        return here, outcomes

    async def _held_by_a_peer(self, name: str) -> bool:
        key = self._owner.key_for(name)
        for session in self._peers():
            entry = await PeerClient(session).entry(key)
            if entry is not None and not entry.deleted:
                return True
        return False
