"""What this node answers to its peers: replicas stored, blobs fetched, listings,
digests, headers and deletions. Peer input is hostile until checked: writes come
only from the owner (or relayed, signed by the owner), every replica is checked
against the owner's signature as it arrives, and every byte is charged to a quota.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from .. import wire
from ..catalog import BLOCK, Entry, charge
from ..crypto import (
    LEGACY_FORMAT,
    BlobHeader,
    CryptoError,
    FormatError,
    Release,
    SealCheck,
    Tombstone,
    audit_digest,
    chunk_at,
)
from ..identity import KnownOrgs
from ..protocol import RequestRefused
from ..session import BlobSource, PeerSession
from ..space import NoSpace, Reservation, SpaceAccount
from ..store import BlobFile, BlobKey
from ..wire import Code
from .collect import Horizons
from .holdings import Holdings, read_header
from .sync import Sync

log = Logger()

T = TypeVar("T")


class IncomingReplica:
    """A peer's STORE being written to our store, checked against the owner's signature."""

    DISK_CHECK_EVERY = 16 << 20

    def __init__(
        self,
        holdings: Holdings,
        reservation: Reservation,
        credit: int,
        session: PeerSession,
        key: BlobKey,
        request: wire.Store,
        stored: Callable[[IncomingReplica], None],
        done: Callable[[IncomingReplica], None],
    ) -> None:
        self._holdings = holdings
        self.session = session
        self.key = key
        self._size = request.size
        self.version = request.version
        self._reservation = reservation
        # What the version replaced already counts against the same sender.
        self._credit = credit
        self._stored = stored
        self._done = done
        self._next_disk_check = self.DISK_CHECK_EVERY
        self._writer = holdings.writer(
            key,
            pause=lambda: session.hold_reading(self),
            resume=lambda: session.release_reading(self),
        )
        # A holder cannot read the blob, but it can check it is the one announced,
        # complete, and signed by its owner.
        self._seal = SealCheck(owner=key.owner, blob=key.blob)
        self._aborted = False

    @property
    def relayed(self) -> bool:
        """Sent by a node other than the owner."""
        return self.session.info.node_id != self.key.owner

    @property
    def written(self) -> int:
        return self._writer.written

    def write(self, data: bytes | memoryview) -> None:
        if self._aborted:
            return  # superseded by the owner's own stream: the rest is dropped
        if self._size is not None and self._writer.written + len(data) > self._size:
            self.abort("sent more than announced")
            raise wire.ProtocolError(f"STORE of {self.key.blob} sent more than announced")
        written = self._writer.written + len(data)
        check_disk = written >= self._next_disk_check
        if check_disk:
            self._next_disk_check = written + self.DISK_CHECK_EVERY
        try:
            self._reservation.grow(max(written, BLOCK) - self._credit, 0 if check_disk else None)
        except NoSpace as e:
            self.abort(e.message)
            raise RequestRefused(e.code, e.message) from None
        self._writer.write(data)
        had_header = self._seal.header is not None
        try:
            self._seal.feed(data)
        except CryptoError as e:
            part = "blob header" if self._seal.header is None else "blob"
            raise self._refuse(f"bad {part}: {e}") from None
        header = self._seal.header
        if not had_header and header is not None and header.version != self.version:
            raise self._refuse("blob header has another version than announced")

    def _refuse(self, why: str) -> RequestRefused:
        """Drop this replica for a reason the sender should hear (and we should log)."""
        log.warn(
            "refused a replica of {blob} for {owner} from {org}: {why}",
            blob=self.key.blob,
            owner=self.key.owner,
            org=self.session.info.org,
            why=why,
        )
        self.abort(why)
        return RequestRefused("bad_blob", why)

    def finish(self) -> Deferred[None]:
        if self._aborted:
            return fail(RequestRefused("busy", "the owner sent this blob itself meanwhile"))
        if self._size is not None and self._writer.written != self._size:
            self.abort("shorter than announced")
            return fail(RequestRefused("bad_request", "blob shorter than announced"))
        try:
            self._seal.finish()
        except CryptoError as e:
            return fail(self._refuse(f"blob does not verify: {e}"))
        return Deferred.fromCoroutine(self._publish())

    async def _publish(self) -> None:
        try:
            record = self._seal.record
            proof = b"" if record is None else record.to_bytes()
            published = await self._holdings.publish(
                self.key, self.version, self._writer, proof, self.session.info.node_id
            )
        finally:
            self._reservation.release()
            self._done(self)
        if not published:
            raise RequestRefused("have", "holds this version or a newer one (or its deletion)")
        self._stored(self)

    def abort(self, reason: str) -> None:
        if self._aborted:
            return
        self._aborted = True
        self._reservation.release()
        self._done(self)
        self._writer.abort()
        log.info("dropped partial replica {blob}: {reason}", blob=self.key.blob, reason=reason)


class Server:
    """The node's side of every peer session (protocol.SessionHandler)."""

    def __init__(
        self,
        node_id: str,
        holdings: Holdings,
        space: SpaceAccount,
        known: KnownOrgs,
        sync: Sync,
        horizons: Horizons,
    ) -> None:
        self._node_id = node_id
        self._holdings = holdings
        self._space = space
        self._known = known
        self._sync = sync
        self._horizons = horizons
        self._incoming: dict[BlobKey, IncomingReplica] = {}

    def session_ready(self, session: PeerSession) -> None:
        info = session.info
        if info.box_key is not None:
            self._known.met(info.node_id, info.org, info.box_key)
        self._sync.met(session)

    def session_lost(self, session: PeerSession, reason: str) -> None:
        pass  # the registry has forgotten it; what was in flight failed with it

    def _authorize_write(self, session: PeerSession, owner: str) -> None:
        """Writes come from the owner itself, or relayed (signed by the owner) when
        allowed: not for an org that places its files on chosen peers itself."""
        if owner == session.info.node_id:
            return
        if self._sync.relay and owner not in (self._node_id, *self._sync.placed_owners):
            return
        log.warn(
            "refused a write into {owner}'s namespace from {org} ({node_id})",
            owner=owner,
            org=session.info.org,
            node_id=session.info.node_id,
        )
        raise RequestRefused("forbidden", "a peer may only write its own org's blobs")

    def open_store(self, session: PeerSession, request: wire.Store) -> IncomingReplica:
        self._authorize_write(session, request.owner)
        key = BlobKey(request.owner, request.blob)
        catalog = self._holdings.catalog
        if not catalog.is_newer(key, request.version):
            raise RequestRefused("have", "already holds this version or a newer one")
        receiving = self._incoming.get(key)
        if receiving is not None:
            if not receiving.relayed or session.info.node_id != key.owner:
                raise RequestRefused("busy", "this blob is being received already")
            # The owner's own copy wins over a relayed one: its put waits for our answer.
            receiving.abort("the owner sent it itself")
        announced = request.size or 0
        sender = session.info.node_id
        credit = self._credit(key, sender)
        try:
            reservation = self._space.reserve(sender, max(announced, BLOCK) - credit, announced)
        except NoSpace as e:
            log.warn(
                "refused a replica from {org}: {reason}", org=session.info.org, reason=e.message
            )
            raise RequestRefused(e.code, e.message) from None
        incoming = IncomingReplica(
            self._holdings,
            reservation,
            credit,
            session,
            key,
            request,
            self._stored,
            self._done,
        )
        self._incoming[key] = incoming
        return incoming

    def _credit(self, key: BlobKey, sender: str) -> int:
        """What the held version of ``key`` counts against ``sender`` (it goes when
        replaced): the quota is charged for growth only."""
        held = self._holdings.catalog.get(key)
        return charge(held) if held is not None and held.sender == sender else 0

    def _done(self, incoming: IncomingReplica) -> None:
        if self._incoming.get(incoming.key) is incoming:
            del self._incoming[incoming.key]

    def _stored(self, incoming: IncomingReplica) -> None:
        key = incoming.key
        # Debug: a line per replica would be most of a holder's log; its owner logs
        # each put, and the holder's metrics count what it holds.
        log.debug("stored replica {blob} for {owner}", blob=key.blob, owner=key.owner)
        entry = self._holdings.catalog.get(key)
        if entry is not None:
            self._sync.relay_change(incoming.session, key, entry)

    def _open(self, key: BlobKey) -> BlobFile:
        """A stored blob, opened: what is read of it is read on a disk thread."""
        f = self._holdings.open(key)
        if f is None:
            raise RequestRefused(Code.NOT_FOUND, "no such blob")
        return f

    def open_fetch(self, session: PeerSession, request: wire.Fetch) -> Deferred[BlobSource]:
        return Deferred.fromCoroutine(self._open_fetch(request))

    async def _open_fetch(self, request: wire.Fetch) -> BlobSource:
        f = self._open(BlobKey(request.owner, request.blob))
        try:
            _, size = await self._holdings.disk.read(_checked_header, f, request.version)
            if request.offset > size:
                raise RequestRefused(Code.BAD_REQUEST, "offset beyond the end of the blob")
        except BaseException:
            f.close()
            raise
        f.seek(request.offset)
        return self._holdings.disk.reader(f, size)

    def answer(self, session: PeerSession, request: wire.ControlRequest) -> Deferred[wire.Message]:
        if isinstance(request, wire.Delete):
            return Deferred.fromCoroutine(self._answer_delete(session, request))
        if isinstance(request, wire.Release):
            return Deferred.fromCoroutine(self._answer_release(request))
        if isinstance(request, wire.Horizon):
            return succeed(self._horizons.answer(session, request))
        if isinstance(request, wire.Digest):
            return succeed(self._digest(request))
        if isinstance(request, wire.Head):
            return Deferred.fromCoroutine(self._head(BlobKey(request.owner, request.blob)))
        if isinstance(request, wire.Audit):
            return Deferred.fromCoroutine(self._audit(request))
        return succeed(self._listing(request.owner, request.after, request.limit))

    def _digest(self, request: wire.Digest) -> wire.DigestReply:
        """The digest of a prefix of a namespace, and if asked its children's: what
        a peer comparing with this node descends by (merkle.py)."""
        catalog = self._holdings.catalog
        digest, count = catalog.digest(request.owner, request.prefix)
        children: tuple[wire.DigestChild, ...] = ()
        if request.children:
            children = tuple(
                wire.DigestChild(*child)
                for child in catalog.children(request.owner, request.prefix)
            )
        return wire.DigestReply(digest, count, children)

    async def _read(self, key: BlobKey, read: Callable[..., T], *args: object) -> T:
        """``read(f, *args)`` of a stored blob ``f``, on a read thread; ``f`` closed after."""
        f = self._open(key)
        try:
            result: T = await self._holdings.disk.read(read, f, *args)
            return result
        finally:
            f.close()  # the thread is done with it

    async def _head(self, key: BlobKey) -> wire.HeadReply:
        header, size = await self._read(key, _checked_header, None)
        held = self._holdings.catalog.get(key)
        proof = (
            self._holdings.proof(key, held)
            if held is not None and held.version == header.version
            else b""
        )
        return wire.HeadReply(size, header.raw.hex(), proof.hex())

    async def _audit(self, request: wire.Audit) -> wire.AuditReply:
        """Prove this node holds a chunk: hash it, keyed by the auditor's fresh nonce."""
        digest = await self._read(BlobKey(request.owner, request.blob), _audit_answer, request)
        return wire.AuditReply(digest)

    def _listing(self, owner: str, after: str | None, limit: int) -> wire.ListReply:
        """A page of what is held, checked against the disk: a listing never claims
        a blob that went missing behind the node's back (it is forgotten instead)."""
        entries: list[wire.ListEntry] = []
        more = True
        while more and len(entries) < limit:
            page, more = self._holdings.catalog.page(owner, after, limit - len(entries))
            proofs = self._holdings.proofs(owner, page)
            for blob, entry in page:
                if self._holdings.held(BlobKey(owner, blob)) is None:
                    continue
                proof = proofs.get(blob, b"")
                entries.append(wire.ListEntry(blob, entry.version, entry.deleted, proof.hex()))
            if page:
                after = page[-1][0]
        return wire.ListReply(tuple(entries), more)

    async def _answer_release(self, request: wire.Release) -> wire.Message:
        """Drop a replica its owner no longer wants here; only the owner's signature,
        for this node, this blob and this version, does it."""
        try:
            release = Release(
                request.owner,
                bytes.fromhex(request.key),
                request.blob,
                request.version,
                request.holder,
                bytes.fromhex(request.signature),
            ).verify()
        except CryptoError as e:
            raise RequestRefused(Code.BAD_SIGNATURE, f"release does not verify: {e}") from None
        if release.holder != self._node_id:
            raise RequestRefused(Code.BAD_SIGNATURE, "the release is for another holder")
        if release.owner == self._node_id:
            raise RequestRefused(Code.FORBIDDEN, "this node keeps its own files")
        key = BlobKey(release.owner, release.blob)
        if await self._holdings.release(key, release.version):
            log.info("released replica {blob} for {owner}", blob=key.blob, owner=key.owner)
        return wire.Ack()

    async def _answer_delete(self, session: PeerSession, request: wire.Delete) -> wire.Message:
        self._authorize_write(session, request.owner)
        try:
            tomb = Tombstone(
                request.owner,
                bytes.fromhex(request.key),
                request.blob,
                request.version,
                bytes.fromhex(request.signature),
            ).verify()
        except CryptoError as e:
            raise RequestRefused("bad_signature", f"tombstone does not verify: {e}") from None
        if self._horizons.collected(tomb.owner, tomb.version):
            # Its owner collected it everywhere: taking it again would undo that.
            raise RequestRefused(Code.HAVE, "this deletion was collected (below the horizon)")
        key = BlobKey(tomb.owner, tomb.blob)
        catalog = self._holdings.catalog
        held = catalog.get(key)
        if catalog.is_newer(key, tomb.version):
            # A tombstone costs a block like a blob: a peer's quota bounds them too.
            try:
                sender = session.info.node_id
                self._space.check(sender, BLOCK - self._credit(key, sender), None)
            except NoSpace as e:
                raise RequestRefused(e.code, e.message) from None
        # Without news (this deletion or a newer change is here already) it is still done.
        if await self._holdings.bury(tomb, session.info.node_id):
            log.info("deleted replica {blob} for {owner}", blob=key.blob, owner=key.owner)
            if held is not None and not held.deleted:
                # News for the peers only if they may hold the blob: one peer's flood
                # of deletions for ids never stored goes no further than here.
                self._sync.relay_change(session, key, Entry(tomb.version, 0, deleted=True))
        return wire.Ack()


def _checked_header(f: BlobFile, version: int | None) -> tuple[BlobHeader, int]:
    """A stored blob's header (of ``version``, if given) and its length."""
    try:
        header = read_header(f)
        size = os.fstat(f.fileno()).st_size
    except CryptoError:
        raise RequestRefused(Code.NOT_FOUND, "no readable blob") from None
    if version is not None and header.version != version:
        raise RequestRefused(Code.NOT_FOUND, f"holds version {header.version}, not {version}")
    return header, size


def _audit_answer(f: BlobFile, request: wire.Audit) -> str:
    """On a disk thread: the digest of the chunk an audit asks for."""
    header, size = _checked_header(f, request.version)
    try:
        if header.format == LEGACY_FORMAT:
            raise FormatError("a blob of the old format has no chunks to audit")
        start, length, _ = chunk_at(header, size, request.index)
    except FormatError as e:
        raise RequestRefused(Code.NOT_FOUND, str(e)) from None
    f.seek(start)
    return audit_digest(bytes.fromhex(request.nonce), f.read(length)).hex()
