"""Collecting tombstones: once every node that could hold a deleted blob has its
tombstone, the owner lets every node drop it, and nothing deleted comes back.

A tombstone exists so that a node that missed a deletion (it was away, or got the
blob relayed) cannot bring the blob back: relay and anti-entropy push what a peer
lacks, and only the tombstone makes the old version lose. So it may go only once
no node that still has the blob is left to push it, the rule of Garage's table GC.
Here:

- **Who must confirm.** Every node that could hold this org's blobs: every node
  the owner has met (``known_orgs.json``, written at a first session, before
  anything is sent to it), and every node any of them has met (relay passes blobs
  on to those). Each peer names the nodes it has met when the owner asks it
  (HORIZON, answered to the namespace's owner only). A node named that the owner
  cannot reach itself never confirms, so its namespace keeps its tombstones
  (a line of nodes: documented). Nothing expires: a node away for months holds
  collection back for months, as it should if it may hold the blob.
- **What counts as a confirmation.** A peer's ACK of the DELETE the owner sent it
  over the peer's own session (the owner's delete, or this module re-sending it),
  and only once the same peer named the nodes it met *after* that ACK: a node
  passes a blob on only while it holds it, so the list taken after it buried the
  tombstone names every node it could ever have passed the blob to. Nobody can
  confirm for another node, and a node that refuses or cannot take the tombstone
  (quota, rate) has not confirmed. A peer's word about itself is all there is: a
  lying peer can keep the ciphertext whatever it says, and is handled below.
- **The horizon.** The owner collects the oldest tombstones first: once every
  node confirmed every deletion up to version H (and they are older than
  ``--collect-after``), it signs a horizon H of its namespace (crypto.Horizon).
  Every node that gets it drops that namespace's tombstones at or below H and from
  then on refuses them ("have"): one signature per namespace, not per tombstone,
  is what lets a node that collected remember it. New deletions always get
  versions above H.
- **No churn.** Before two nodes compare a namespace (sync.py), they exchange
  horizons: the one that had not heard drops its collected tombstones before the
  digests are compared, and a DELETE at or below the horizon is refused, never
  buried again. A horizon is the owner's statement, so anyone may pass it on; the
  owner also gives it to every peer itself.
- **No resurrection.** A node that was away with the old blob is one that must
  confirm: until it is back and took the tombstone (which removes its blob), H
  stays below that deletion. Once it confirmed, it holds no old copy to push. A
  *lying* peer could keep the ciphertext and push it to a node that collected:
  the owner's ledger keeps every deletion for ever, so when the owner sees a live
  version of a deleted, collected blob in a peer's listing (proven by its own
  record), it deletes it again, with a new tombstone above H.

Only the owner's signature makes any node drop a tombstone: a horizon that does
not verify, or that another key signed, is refused and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .. import wire
from ..crypto import CryptoError, Horizon, Tombstone
from ..ledger import Ledger, LedgerEntry
from ..protocol import RequestRefused
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .holdings import Holdings
from .owner import Owner

__all__ = ["COLLECT_AFTER", "Collector", "Horizons"]

log = Logger()

COLLECT_AFTER = 3600.0  # seconds a tombstone is kept at least, whoever confirmed it
# DELETEs re-sent to one peer per round (its rate limit takes 2000 at once).
MAX_RESENDS = 512
# Deletions waiting for confirmation held in memory at once, the oldest: the horizon
# moves in version order, so the newer ones are read from the ledger when it is there.
MAX_PENDING = 10_000
_NO_LIMIT = (1 << 64) - 1


class Horizons:
    """Every node's side: the newest horizon of each namespace, kept in the index,
    and the tombstones at or below it dropped and refused."""

    def __init__(self, holdings: Holdings, met: Callable[[], Iterable[str]]) -> None:
        """``met()``: the node ids of every peer this node has met."""
        self._holdings = holdings
        self._met = met
        self._newest: dict[str, Horizon] = {}
        for owner, record in holdings.index.horizons().items():
            try:
                horizon = Horizon.from_bytes(record)
            except CryptoError as e:
                log.warn("ignoring a bad horizon of {owner}: {error}", owner=owner, error=str(e))
                continue
            if horizon.owner == owner:
                self._newest[owner] = horizon
        # What each session is known to hold already, so it is not offered again.
        self._told: dict[PeerSession, dict[str, int]] = {}

    def get(self, owner: str) -> Horizon | None:
        return self._newest.get(owner)

    def version(self, owner: str) -> int:
        """``owner``'s horizon (0: none; no version is 0)."""
        horizon = self._newest.get(owner)
        return 0 if horizon is None else horizon.version

    def collected(self, owner: str, version: int) -> bool:
        """Whether a tombstone of ``owner`` at ``version`` was collected everywhere."""
        horizon = self._newest.get(owner)
        return horizon is not None and version <= horizon.version

    def adopt(self, horizon: Horizon) -> bool:
        """Take a verified horizon if it is newer than the one held; True if it was.
        The tombstones at or below it go at once."""
        held = self._newest.get(horizon.owner)
        if held is not None and held.version >= horizon.version:
            return False
        self._newest[horizon.owner] = horizon
        # Queued before the rows are dropped: after a crash in between, the rows
        # left are skipped when the index is read (index.StoreIndex.rows).
        self._holdings.index.put_horizon(
            horizon.owner, horizon.version, horizon.to_bytes()
        ).addErrback(
            lambda f: log.warn(
                "could not keep the horizon of {owner}: {error}",
                owner=horizon.owner,
                error=f.getErrorMessage(),
            )
        )
        dropped = self._holdings.collect(horizon.owner, horizon.version)
        log.info(
            "horizon of {owner} now {version}: {dropped} tombstones collected",
            owner=horizon.owner,
            version=horizon.version,
            dropped=dropped,
        )
        return True

    def answer(self, session: PeerSession, request: wire.Horizon) -> wire.HorizonReply:
        """A peer offers a horizon (or asks for ours): take it if it is the owner's
        and newer; answer ours, and to the owner also every node we have met."""
        if request.version is not None:
            if request.key is None or request.signature is None:
                raise RequestRefused(wire.Code.BAD_REQUEST, "a horizon needs a key and signature")
            if request.version > self.version(request.owner):
                try:
                    offered = Horizon(
                        request.owner,
                        bytes.fromhex(request.key),
                        request.version,
                        bytes.fromhex(request.signature),
                    ).verify()
                except CryptoError as e:
                    log.warn(
                        "refused a horizon of {owner} from {org}: {error}",
                        owner=request.owner,
                        org=session.info.org,
                        error=str(e),
                    )
                    raise RequestRefused(
                        wire.Code.BAD_SIGNATURE, f"horizon does not verify: {e}"
                    ) from None
                self.adopt(offered)
        met: tuple[str, ...] = ()
        complete = False
        if session.info.node_id == request.owner:
            named = sorted(set(self._met()))
            complete = len(named) <= wire.MAX_MET
            met = tuple(named[: wire.MAX_MET])
        mine = self._newest.get(request.owner)
        if mine is None:
            return wire.HorizonReply(met=met, complete=complete)
        return wire.HorizonReply(
            mine.version, mine.owner_key.hex(), mine.signature.hex(), met, complete
        )

    async def exchange(
        self, session: PeerSession, owner: str, *, force: bool = False
    ) -> wire.HorizonReply | None:
        """Before a namespace is compared with a peer: both end up with the newer
        horizon, so that neither offers the other a tombstone it collected. Once
        per session and horizon unless ``force``; None if not asked or it failed.

        A node with no horizon of the namespace does not ask (the namespace's owner
        gives its horizon to every peer it meets, and all who may hold its blobs are
        its peers), so a federation that never collected exchanges nothing more."""
        for gone in [s for s in self._told if s.closed]:
            del self._told[gone]
        told = self._told.setdefault(session, {})
        if not force and told.get(owner, 0) == self.version(owner):
            return None
        try:
            theirs, reply = await PeerClient(session).horizon(owner, self._newest.get(owner))
        except (RemoteError, SessionClosed) as e:
            log.info("no horizon exchanged with {org}: {error}", org=session.info.org, error=str(e))
            return None
        if theirs is not None:
            self.adopt(theirs)
        if not session.closed:
            told[owner] = self.version(owner)
        return reply


@dataclass
class _Pending:
    """One of this org's deletions not collected yet, and who confirmed it."""

    tomb: Tombstone
    acked: set[str] = field(default_factory=set)  # peers that took its DELETE
    vouched: set[str] = field(default_factory=set)  # of those, peers that named whom they met since


class Collector:
    """The owner's side: confirmations of this org's deletions, and its horizon."""

    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        ledger: Ledger,
        horizons: Horizons,
        peers: Callable[[], Sequence[PeerSession]],
        met: Callable[[], Iterable[str]],
        collect_after: float = COLLECT_AFTER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``met()``: every peer node this node has met (they may hold its blobs)."""
        self._owner = owner
        self._holdings = holdings
        self._ledger = ledger
        self._horizons = horizons
        self._peers = peers
        self._known = met
        self.collect_after = collect_after
        self._clock = clock
        self._pending: dict[str, _Pending] | None = None  # blob -> ; read from the ledger
        self._truncated = False  # the ledger holds more than were read
        self._complete_to = _NO_LIMIT
        self._named: dict[str, frozenset[str] | None] = {}  # peer -> whom it met (None: too many)
        self._running = False
        self._redeleting: set[str] = set()
        self._last_waiting: set[str] = set()
        self.collected = 0  # tombstones collected since start

    @property
    def _node_id(self) -> str:
        return self._owner.node_id

    def _load(self) -> dict[str, _Pending]:
        if self._pending is None:
            self._fill()
        assert self._pending is not None
        return self._pending

    def _refill(self) -> None:
        """Read the next oldest deletions once those read were all collected."""
        pending = self._load()
        if self._truncated and all(p.tomb.version > self._complete_to for p in pending.values()):
            self._fill()

    def _fill(self) -> None:
        """The oldest deletions the ledger keeps above the horizon (the ledger, not the
        index, is the owner's record of what it deleted), keeping what is known of
        those held already."""
        held = self._pending or {}
        horizon = self._horizons.version(self._node_id)
        rows = self._ledger.deletions(horizon, MAX_PENDING)
        self._truncated = len(rows) == MAX_PENDING
        # Only up to here does the window hold every deletion: no horizon beyond it.
        self._complete_to = rows[-1].version if self._truncated else _NO_LIMIT
        key = self._owner.public_key
        pending = {}
        for e in rows:
            was = held.get(e.blob)
            if was is not None and was.tomb.version == e.version:
                pending[e.blob] = was
            else:
                pending[e.blob] = _Pending(
                    Tombstone(self._node_id, key, e.blob, e.version, e.proof)
                )
        for blob, was in held.items():
            if was.tomb.version > horizon:
                pending.setdefault(blob, was)  # signed since, or overwritten since
        self._pending = pending

    def deleted(self, tomb: Tombstone) -> None:
        """A deletion of this org was just signed: nobody has confirmed it yet."""
        pending = self._load()
        was = pending.get(tomb.blob)
        if was is None or was.tomb.version < tomb.version:
            pending[tomb.blob] = _Pending(tomb)

    def acked(self, peer: str, tomb: Tombstone) -> None:
        """``peer`` answered the DELETE of ``tomb`` on its own session."""
        pending = self._load().get(tomb.blob)
        if pending is not None and pending.tomb.version == tomb.version:
            pending.acked.add(peer)

    def required(self) -> set[str] | None:
        """Every node that must confirm a deletion: those met, and those they met
        (None: a peer met more nodes than it could name)."""
        nodes = set(self._known())
        for named in self._named.values():
            if named is None:
                return None
            nodes |= named
        nodes.discard(self._node_id)
        return nodes

    def run(self) -> Deferred[int]:
        """One round in the background (one at a time): how many were collected."""
        if self._running:
            return Deferred.fromCoroutine(_nothing())
        self._running = True
        d = Deferred.fromCoroutine(self._round())

        def done(result: object) -> object:
            self._running = False
            return result

        d.addBoth(done)
        return d

    async def _round(self) -> int:
        self._forget_collected()
        self._refill()
        pending = self._load()
        if not pending:
            return 0
        for session in list(self._peers()):
            if not session.closed:
                await self._confirm(session, pending)
        return self._advance()

    async def _confirm(self, session: PeerSession, pending: dict[str, _Pending]) -> None:
        """Send a peer each pending deletion it has not taken yet, then ask it whom
        it has met: the answer vouches for the deletions it took before."""
        peer = session.info.node_id
        client = PeerClient(session)
        unsent = sorted(
            (p for p in pending.values() if peer not in p.acked), key=lambda p: p.tomb.version
        )
        for p in unsent[:MAX_RESENDS]:
            try:
                await client.delete(p.tomb)
            except RemoteError as e:
                if e.code == wire.Code.SLOW_DOWN:
                    break
                continue  # refused (quota, ...): not confirmed
            except SessionClosed:
                return
            p.acked.add(peer)
        taken = [p for p in pending.values() if peer in p.acked and peer not in p.vouched]
        reply = await self._horizons.exchange(session, self._node_id, force=True)
        if reply is None:
            return
        self._named[peer] = frozenset(reply.met) if reply.complete else None
        for p in taken:
            p.vouched.add(peer)
        self._forget_collected()

    def _forget_collected(self) -> None:
        """Deletions at or below this org's horizon (perhaps learnt back from a peer)."""
        pending = self._load()
        horizon = self._horizons.version(self._node_id)
        for blob in [b for b, p in pending.items() if p.tomb.version <= horizon]:
            del pending[blob]

    def _advance(self) -> int:
        """Sign a new horizon if every node confirmed the oldest deletions; how many
        it collects."""
        pending = self._load()
        required = self.required()
        if required is None or not pending:
            return 0
        ripe = int((self._clock() - self.collect_after) * 1e9)
        horizon = self._horizons.version(self._node_id)
        for p in sorted(pending.values(), key=lambda p: p.tomb.version):
            if p.tomb.version > ripe or p.tomb.version > self._complete_to:
                break
            if not required <= p.vouched:
                self._waiting_for(required - p.vouched, len(pending))
                break
            horizon = p.tomb.version
        if horizon <= self._horizons.version(self._node_id):
            return 0
        self._horizons.adopt(Horizon.sign(self._owner.signer, horizon))
        before = len(pending)
        self._forget_collected()
        count = before - len(pending)
        self.collected += count
        log.info(
            "collected {count} deletions up to {horizon}: confirmed by all {nodes} nodes",
            count=count,
            horizon=horizon,
            nodes=len(required),
        )
        # Every peer hears now (the next sync would tell it too).
        for session in list(self._peers()):
            Deferred.fromCoroutine(self._horizons.exchange(session, self._node_id))
        return count

    def _waiting_for(self, nodes: set[str], pending: int) -> None:
        """Say which nodes hold collection back (once, until that changes)."""
        if nodes == self._last_waiting:
            return
        self._last_waiting = nodes
        log.info(
            "{pending} deletions kept until {count} nodes confirm them: {nodes}",
            pending=pending,
            count=len(nodes),
            nodes=", ".join(sorted(nodes)),
        )

    # -- a collected deletion seen again

    def listed(self, peer: str, theirs: dict[str, wire.ListEntry]) -> None:
        """A peer listed this org's namespace: a live version of a blob whose deletion
        was collected (proven by this org's own record) was brought back; delete it
        again, above the horizon."""
        catalog = self._holdings.catalog
        for blob, claim in theirs.items():
            if claim.deleted or blob in self._redeleting:
                continue
            if catalog.get(BlobKey(self._node_id, blob)) is not None:
                continue  # sync sends the peer the newer change
            written = self._ledger.get(blob)
            if written is None or not written.deleted or written.version <= claim.version:
                continue
            if not self._horizons.collected(self._node_id, written.version):
                continue
            if not self._owner.proves(blob, claim, self._ledger.newest):
                continue
            log.warn(
                "{peer} holds {blob}, deleted and its tombstone collected: deleting it again",
                peer=peer,
                blob=blob,
            )
            self._redeleting.add(blob)
            Deferred.fromCoroutine(self._delete_again(blob))

    async def _delete_again(self, blob: str) -> None:
        try:
            await self._sign_again(blob)
        except Exception as e:
            log.warn("could not delete {blob} again: {error}", blob=blob, error=str(e))
        finally:
            self._redeleting.discard(blob)

    async def _sign_again(self, blob: str) -> None:
        key = BlobKey(self._node_id, blob)
        version = self._holdings.next_version(self._node_id, self._ledger.newest)
        tomb = Tombstone.sign(self._owner.signer, blob, version)
        await self._holdings.bury(tomb, self._node_id)
        await self._ledger.record(LedgerEntry(key.blob, version, True, tomb.signature))
        self.deleted(tomb)
        for session in list(self._peers()):
            try:
                await PeerClient(session).delete(tomb)
            except (RemoteError, SessionClosed):
                continue
            self.acked(session.info.node_id, tomb)


async def _nothing() -> int:
    return 0
