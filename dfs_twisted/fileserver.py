"""What the node does with files: put, get, delete, list, recover, and serving peers.

Everything here is asynchronous and streaming: plaintext comes in as pieces, is
encrypted once into ~1 MiB ciphertext chunks, and each chunk goes to the local
blob and to every connected peer. Nothing holds a whole file in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .catalog import BLOCK, Catalog, Entry, charge
from .crypto import (
    CHUNK_SIZE,
    FIXED_HEADER_SIZE,
    BlobHeader,
    CryptoError,
    Decryptor,
    Encryptor,
    FileKey,
    OrgKey,
    SealCheck,
    Tombstone,
    ciphertext_size,
    file_key,
    header_length,
    open_metadata,
    parse_header,
    plaintext_size,
)
from .diskqueue import DiskQueue, QueuedBlob
from .grants import Grant
from .identity import KnownOrg, KnownOrgs
from .keys import ReadKey
from .peers import PeerRegistry
from .protocol import PeerProtocol, RemoteError, RequestRefused, SessionClosed
from .space import NoSpace, SpaceAccount
from .store import BlobKey, BlobStore

log = Logger()

FETCH_TIMEOUT = 30.0  # seconds a peer may take to start answering a FETCH


class FileNotFound(Exception):
    """Neither this node nor any connected peer holds the file."""


class DamagedBlob(Exception):
    """A blob failed verification."""


class PutInProgress(Exception):
    """The same name is being put already."""


class UnknownPeer(Exception):
    """No (single) org this node has met answers to that name or id."""


class Clock(Protocol):
    def callLater(self, delay: float, f: Callable[..., Any], *a: Any) -> Any: ...
    def seconds(self) -> float: ...


@dataclass(frozen=True)
class PeerOutcome:
    org: str
    node_id: str
    ok: bool
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"org": self.org, "node_id": self.node_id, "ok": self.ok, "error": self.error}


@dataclass(frozen=True)
class PutResult:
    blob: str
    size: int
    peers: tuple[PeerOutcome, ...]
    seconds: float = 0.0  # from the start of the upload until durable everywhere

    @property
    def replicas(self) -> int:
        """Nodes holding a durable copy, this one included."""
        return 1 + sum(p.ok for p in self.peers)


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    blob: str
    mtime: int
    replicas: int
    here: bool = True  # held by this node (else only by peers: `recover` brings it back)


def read_header(f: BinaryIO) -> BlobHeader:
    """Parse the header at the start of an open blob file."""
    prefix = f.read(FIXED_HEADER_SIZE)
    total = header_length(prefix)
    rest = f.read(total - len(prefix))
    return parse_header(prefix + rest)


@implementer(IPushProducer)
class _SessionThrottle:
    """Lets a slow HTTP client pause the peer connection feeding it."""

    def __init__(self, session: PeerProtocol) -> None:
        self._session = session

    def pauseProducing(self) -> None:
        self._session.hold_reading(self)

    def resumeProducing(self) -> None:
        self._session.release_reading(self)

    def stopProducing(self) -> None:
        self._session.release_reading(self)


class Upload:
    """One put: plaintext in, ciphertext to the local store and to every live peer."""

    def __init__(
        self,
        server: FileServer,
        name: str,
        size: int | None,
        upstream: IPushProducer | None,
    ) -> None:
        self._server = server
        self._upstream = upstream
        # Why the uploader is paused: slow peers, a full disk queue.
        self._holds: set[object] = set()
        self.version = server.next_version()
        self._encryptor = Encryptor(
            server.key, server.signer, name, self.version, mtime=int(time.time())
        )
        self.blob = self._encryptor.blob
        self._started = time.monotonic()
        self._local = server.disk.blob(
            server.store.begin(BlobKey(server.node_id, self.blob)),
            pause=lambda: self._hold("disk"),
            resume=lambda: self._release("disk"),
        )
        announced = (
            None if size is None else ciphertext_size(len(self._encryptor.header), CHUNK_SIZE, size)
        )
        self._peers = [
            (session, session.store(wire.Store(server.node_id, self.blob, announced, self.version)))
            for session in server.peers.live()
        ]
        self._emit(self._encryptor.header)

    def write(self, data: bytes) -> None:
        for chunk in self._encryptor.update(data):
            self._emit(chunk)
        for session, stream in self._peers:
            if session.paused and not stream.closed and session not in self._holds:
                self._hold(session)
                session.when_writable().addBoth(self._writable, session)

    def _writable(self, _: object, session: PeerProtocol) -> None:
        self._release(session)

    def _emit(self, ciphertext: bytes) -> None:
        self._local.write(ciphertext)
        for _, stream in self._peers:
            stream.write(ciphertext)

    def _hold(self, reason: object) -> None:
        if not self._holds and self._upstream is not None:
            self._upstream.pauseProducing()
        self._holds.add(reason)

    def _release(self, reason: object) -> None:
        self._holds.discard(reason)
        if not self._holds and self._upstream is not None:
            self._upstream.resumeProducing()

    def finish(self) -> Deferred[PutResult]:
        d = Deferred.fromCoroutine(self._finish())
        d.addBoth(self._ended)
        return d

    def _ended(self, result: object) -> object:
        self._server.put_ended(self)
        return result

    async def _finish(self) -> PutResult:
        self._upstream = None  # the body is complete: never pause or resume it again
        self._emit(self._encryptor.finalize())
        streamed = time.monotonic() - self._started
        replies = [stream.finish() for _, stream in self._peers]
        try:
            # False when an rm of this name came in meanwhile: the later change wins.
            await self._server.publish(
                BlobKey(self._server.node_id, self.blob), self.version, self._local
            )
        except BaseException:
            self.abort("local write failed")
            raise
        local = time.monotonic() - self._started
        outcomes = []
        for (session, _), reply in zip(self._peers, replies, strict=True):
            assert session.info is not None
            try:
                await reply
                outcomes.append(PeerOutcome(session.info.org, session.info.node_id, True))
            except (RemoteError, SessionClosed) as e:
                # "have": a relayed copy of this very version got there first.
                have = isinstance(e, RemoteError) and e.code == "have"
                error = None if have else str(e)
                outcomes.append(PeerOutcome(session.info.org, session.info.node_id, have, error))
        result = PutResult(
            self.blob, self._encryptor.size, tuple(outcomes), time.monotonic() - self._started
        )
        log.info(
            "put {blob}: {size} bytes in {seconds:.2f}s (streamed {streamed:.2f}s, "
            "durable here {local:.2f}s), {replicas} replicas",
            blob=self.blob,
            size=result.size,
            seconds=result.seconds,
            streamed=streamed,
            local=local,
            replicas=result.replicas,
        )
        return result

    def abort(self, reason: str) -> None:
        self._server.put_ended(self)
        self._local.abort()
        for _, stream in self._peers:
            stream.abort(reason)


class _NotKept:
    """Where a fetched blob goes when it is not to be stored here."""

    written = 0

    def write(self, data: bytes) -> None:
        pass

    def commit(self) -> Deferred[None]:
        return succeed(None)

    def abort(self) -> None:
        pass


class Download:
    """A file's plaintext, ready to stream to a consumer (an HTTP response)."""

    def __init__(self, name: str, blob: str, size: int, source: str) -> None:
        self.name = name
        self.blob = blob  # what logs may name: never the file name
        self.size = size
        self.source = source  # "local" or the org of the peer it comes from

    def stream_to(self, consumer: IConsumer) -> Deferred[None]:
        raise NotImplementedError


@implementer(IPullProducer)
class _LocalDownload(Download):
    def __init__(
        self,
        server: FileServer,
        key: BlobKey,
        org_key: OrgKey | FileKey,
        f: BinaryIO,
        name: str,
        size: int,
    ) -> None:
        super().__init__(name, key.blob, size, "local")
        self._server = server
        self._key = key
        self._file = f
        self._decryptor = Decryptor(org_key, owner=key.owner, blob=key.blob)
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] = Deferred()

    def stream_to(self, consumer: IConsumer) -> Deferred[None]:
        self._file.seek(0)
        self._consumer = consumer
        consumer.registerProducer(self, False)
        return self._done

    # A pull producer: the consumer asks for the next piece when it has room.
    def resumeProducing(self) -> None:
        assert self._consumer is not None
        try:
            chunk = self._file.read(CHUNK_SIZE)
            if chunk:
                self._consumer.write(self._decryptor.feed(chunk))
                return
            last, _ = self._decryptor.finish()
            self._consumer.write(last)
        except CryptoError as e:
            self._close()
            self._server.damaged(self._key, str(e))
            self._done.errback(DamagedBlob(str(e)))
            return
        self._close()
        self._done.callback(None)

    def stopProducing(self) -> None:
        self._close()
        if not self._done.called:
            self._done.errback(SessionClosed("client went away"))

    def _close(self) -> None:
        self._file.close()
        if self._consumer is not None:
            self._consumer.unregisterProducer()
            self._consumer = None


class _PeerFetch:
    """Ciphertext of one blob arriving from a peer, verified as it comes.

    Every byte goes to a new local blob (committed only once the whole stream
    verified) and, once a consumer is attached, its plaintext goes there.
    `header` fires with the blob's header, or fails if the fetch ends first.
    Without an org key (a replica held for another org) only the owner's
    signature is checked.
    """

    def __init__(
        self,
        server: FileServer,
        session: PeerProtocol,
        key: BlobKey,
        org_key: OrgKey | FileKey | None,
        keep: bool,
    ) -> None:
        self.key = key
        self._server = server
        self._check = (
            SealCheck(owner=key.owner, blob=key.blob)
            if org_key is None
            else Decryptor(org_key, owner=key.owner, blob=key.blob)
        )
        # Another org's file read with its key is not kept: it is not ours to hold.
        self._writer: QueuedBlob | _NotKept = (
            server.disk.blob(
                server.store.begin(key),
                pause=lambda: session.hold_reading(self),
                resume=lambda: session.release_reading(self),
            )
            if keep
            else _NotKept()
        )
        self.size: int | None = None
        self.received = 0
        self.header: Deferred[BlobHeader] = Deferred()
        self._consumer: IConsumer | None = None
        self._held: list[bytes] = []
        self._failed: Exception | None = None

    def started(self, size: int) -> None:
        self.size = size

    def data(self, payload: bytes) -> None:
        if self._failed is not None:
            return
        self.received += len(payload)
        self._writer.write(payload)
        try:
            plain = self._check.feed(payload)
        except CryptoError as e:
            self.fail(DamagedBlob(str(e)))
            return
        if self._check.header is not None and not self.header.called:
            self.header.callback(self._check.header)
        if plain:
            if self._consumer is None:
                self._held.append(plain)
            else:
                self._consumer.write(plain)

    def attach(self, consumer: IConsumer) -> None:
        self._consumer = consumer
        for plain in self._held:
            consumer.write(plain)
        self._held.clear()

    def fail(self, error: Exception) -> None:
        if self._failed is None:
            self._failed = error
        self._writer.abort()
        if not self.header.called:
            self.header.errback(error)

    def ended(self, result: object) -> object:
        """The fetch's reply: before the header it is a failure, reported via `header`."""
        if self.header.called:
            return result
        if isinstance(result, Failure):
            error = result.value
            if isinstance(error, CancelledError):
                error = TimeoutError(f"no answer in {FETCH_TIMEOUT:.0f}s")
            self.fail(error if isinstance(error, Exception) else DamagedBlob(str(error)))
        else:
            self.fail(DamagedBlob("stream ended before a complete header"))
        return None

    async def complete(self) -> None:
        """After the stream ended: check the end, write the last plaintext, commit."""
        try:
            if self._failed is not None:
                raise DamagedBlob(str(self._failed))
            if self.size is not None and self.received != self.size:
                raise DamagedBlob(f"peer sent {self.received} of {self.size} bytes")
            header = self._check.header
            if isinstance(self._check, Decryptor):
                last, _ = self._check.finish()
            else:
                self._check.finish()
                last = b""
        except (CryptoError, DamagedBlob) as e:
            self.fail(DamagedBlob(str(e)))
            raise DamagedBlob(str(e)) from e
        if self._consumer is not None:
            self._consumer.write(last)
        if isinstance(self._writer, QueuedBlob):
            assert header is not None
            await self._server.publish(self.key, header.version, self._writer)

    def abort(self) -> None:
        self._writer.abort()


class _PeerDownload(Download):
    def __init__(
        self,
        server: FileServer,
        name: str,
        size: int,
        session: PeerProtocol,
        fetch: _PeerFetch,
        reply: Deferred[wire.Message],
    ) -> None:
        assert session.info is not None
        super().__init__(name, fetch.key.blob, size, session.info.org)
        self._server = server
        self._session = session
        self._fetch = fetch
        self._reply = reply

    def stream_to(self, consumer: IConsumer) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stream(consumer))

    async def _stream(self, consumer: IConsumer) -> None:
        throttle = _SessionThrottle(self._session)
        consumer.registerProducer(throttle, True)
        try:
            self._fetch.attach(consumer)
            await self._reply
            await self._fetch.complete()
            log.info(
                "restored local copy of {blob} from {org}",
                blob=self._fetch.key.blob,
                org=self.source,
            )
        except DamagedBlob:
            self._fetch.abort()
            assert self._session.info is not None
            self._server.suspect(self._session.info.node_id, self._fetch.key)
            raise
        except BaseException:
            self._fetch.abort()
            raise
        finally:
            consumer.unregisterProducer()
            # Never leave the peer connection paused on behalf of a finished download.
            throttle.stopProducing()


class FileSource:
    """A stored blob served to a peer's FETCH."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._file = f
        self.size = size

    def read(self, n: int) -> bytes:
        return self._file.read(n)

    def close(self) -> None:
        self._file.close()


class IncomingReplica:
    """A peer's STORE being written to our store, checked against the owner's signature."""

    DISK_CHECK_EVERY = 16 << 20

    def __init__(
        self, server: FileServer, session: PeerProtocol, key: BlobKey, request: wire.Store
    ) -> None:
        self._server = server
        self._session = session
        self._key = key
        self._size = request.size
        self._version = request.version
        self._space = server.space
        self._replaces = charge(server.catalog.get(key))
        self._next_disk_check = self.DISK_CHECK_EVERY
        self._writer = server.disk.blob(
            server.store.begin(key),
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
        return self._session.info is None or self._session.info.node_id != self._key.owner

    def write(self, data: bytes) -> None:
        if self._aborted:
            return  # superseded by the owner's own stream: the rest is dropped
        if self._size is not None and self._writer.written + len(data) > self._size:
            self.abort("sent more than announced")
            raise wire.ProtocolError(f"STORE of {self._key.blob} sent more than announced")
        written = self._writer.written + len(data)
        check_disk = written >= self._next_disk_check
        if check_disk:
            self._next_disk_check = written + self.DISK_CHECK_EVERY
        try:
            self._space.check(
                self._key.owner, max(written, BLOCK) - self._replaces, 0 if check_disk else None
            )
        except NoSpace as e:
            self.abort(e.message)
            raise RequestRefused(e.code, e.message) from None
        self._writer.write(data)
        had_header = self._seal.header is not None
        try:
            self._seal.feed(data)
        except CryptoError as e:
            raise self._refuse(f"bad blob header: {e}") from None
        header = self._seal.header
        if not had_header and header is not None and header.version != self._version:
            raise self._refuse("blob header has another version than announced")

    def _refuse(self, why: str) -> RequestRefused:
        """Drop this replica for a reason the sender should hear (and we should log)."""
        assert self._session.info is not None
        log.warn(
            "refused a replica of {blob} for {owner} from {org}: {why}",
            blob=self._key.blob,
            owner=self._key.owner,
            org=self._session.info.org,
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
            published = await self._server.publish(self._key, self._version, self._writer)
        finally:
            self._release()
        if not published:
            raise RequestRefused("have", "holds this version or a newer one (or its deletion)")
        self._server.replica_stored(self._session, self._key, self._version, self._writer.written)

    def _release(self) -> None:
        self._server.incoming_done(self._key, self)

    def abort(self, reason: str) -> None:
        if self._aborted:
            return
        self._aborted = True
        self._release()
        self._writer.abort()
        log.info("dropped partial replica {blob}: {reason}", blob=self._key.blob, reason=reason)


def index_store(store: BlobStore) -> Catalog:
    """Build the catalog from what is on disk (once, at start-up)."""
    catalog = Catalog()
    for owner in store.owners():
        for blob in store.tombstones(owner):
            key = BlobKey(owner, blob)
            record = store.tombstone(key)
            try:
                tomb = Tombstone.from_bytes(record or b"")
                if (tomb.owner, tomb.blob) != (owner, blob):
                    raise CryptoError("it is another blob's")
            except CryptoError as e:
                log.warn("ignoring a bad tombstone {blob}: {error}", blob=blob, error=str(e))
                continue
            catalog.set(key, Entry(tomb.version, 0, deleted=True))
        for blob in store.blobs(owner):
            key = BlobKey(owner, blob)
            f = store.open(key)
            if f is None:
                continue
            try:
                with f:
                    version = read_header(f).version
                    size = os.fstat(f.fileno()).st_size
            except CryptoError as e:
                # Left for scrub and get to find and replace; not listed meanwhile.
                log.warn("unreadable blob {blob}: {error}", blob=blob, error=str(e))
                continue
            if catalog.is_newer(key, version):
                catalog.set(key, Entry(version, size))
            else:
                store.delete(key)  # deleted before a crash finished removing it
    return catalog


class FileServer:
    """The node's file logic, on top of the store, the org key and live peer sessions."""

    def __init__(
        self,
        store: BlobStore,
        key: OrgKey,
        signer: Ed25519PrivateKey,
        node_id: str,
        peers: PeerRegistry,
        clock: Clock,
        disk: DiskQueue,
        space: SpaceAccount,
        catalog: Catalog,
        box: X25519PrivateKey,
        known: KnownOrgs,
        relay: bool = True,
    ) -> None:
        self.store = store
        self.disk = disk
        self.space = space
        self.catalog = catalog
        self.relay = relay
        self._suspects: set[tuple[str, BlobKey]] = set()
        self._incoming: dict[BlobKey, IncomingReplica] = {}
        self._syncing: set[PeerProtocol] = set()
        self._uploads: dict[BlobKey, Upload] = {}
        self._publishing: dict[BlobKey, int] = {}  # versions whose commit is queued
        self.key = key
        self.signer = signer
        self.box = box  # opens grants made for this node
        self.known = known  # the grant keys of peers met
        self.node_id = node_id
        self.own = ReadKey(node_id, "this org", key)
        self.peers = peers
        self.clock = clock

    def next_version(self) -> int:
        """A version above every one this org has used: time-based, never going back."""
        return max(time.time_ns(), self.catalog.newest(self.node_id) + 1)

    async def publish(self, key: BlobKey, version: int, writer: QueuedBlob) -> bool:
        """Commit a written blob version, unless it or a newer one is held or on its way.

        Commits of one key can be queued at once (a put, a replica, a repair): the
        newest must be the one left on disk. True if this version is now held.
        """
        pending = self._publishing.get(key)
        if not self.catalog.is_newer(key, version) or (pending is not None and pending >= version):
            writer.abort()
            return False
        self._publishing[key] = version
        try:
            await writer.commit()
        finally:
            if self._publishing.get(key) == version:
                del self._publishing[key]
        if not self.catalog.is_newer(key, version):
            # A deletion landed while the commit was queued: the newer change wins.
            self.store.delete(key)
            return False
        held = self.catalog.get(key)
        self.catalog.set(key, Entry(version, writer.written))
        if held is not None and held.deleted:
            self.store.remove_tombstone(key)
        return True

    # -- the owner's operations

    def begin_put(self, name: str, size: int | None, upstream: IPushProducer | None) -> Upload:
        """Start a put (ValueError for a bad name, PutInProgress for a name being put)."""
        key = self._key_for(name)  # validates the name
        if key in self._uploads:
            # Two versions racing to the disk could leave the older one there.
            raise PutInProgress(f"a put of {name!r} is in progress already")
        upload = self._uploads[key] = Upload(self, name, size, upstream)
        return upload

    def put_ended(self, upload: Upload) -> None:
        key = BlobKey(self.node_id, upload.blob)
        if self._uploads.get(key) is upload:
            del self._uploads[key]

    def _key_for(self, name: str, reader: ReadKey | None = None) -> BlobKey:
        org = reader or self.own
        return BlobKey(org.org_id, org.key.blob_id(name))

    async def open_download(self, name: str, reader: ReadKey | None = None) -> Download:
        """The local copy if it verifies, else one fetched from a peer (FileNotFound).

        ``reader``: another org's read key, to read that org's file instead.
        """
        org = reader or self.own
        key = self._key_for(name, reader)
        held = self.catalog.get(key)
        if held is not None and held.deleted:
            raise FileNotFound(name)
        return await self._download(key, name, org.key, own=reader is None)

    async def open_granted(self, grant: Grant) -> Download:
        """The one file version a grant to this node opens (GrantError, FileNotFound)."""
        file = grant.open(self.box, self.node_id)
        key = BlobKey(grant.owner, grant.blob)
        try:
            return await self._download(key, grant.name, file, own=False)
        except FileNotFound:
            raise FileNotFound(
                f"{grant.name} of {grant.owner_org}: not on this node or its connected peers, "
                "or changed since it was shared (a grant reads the version it was made for)"
            ) from None

    async def share(self, name: str, to: str, owner_org: str) -> Grant:
        """A grant of this org's file ``name`` (as it is now) to the connected org ``to``."""
        key = self._key_for(name)
        f = self.store.open(key)
        if f is None:
            raise FileNotFound(name)
        with f:
            header = read_header(f)
        recipient = self._known_org(to)
        return Grant.issue(
            self.signer,
            owner_org,
            file_key(self.key, header),
            name,
            recipient.org_id,
            bytes.fromhex(recipient.box_key),
        )

    def _known_org(self, spec: str) -> KnownOrg:
        """The org named (or with that node id, or a 4+ char prefix) among those met."""
        matches = {k.org_id: k for k in self.known.find(spec)}
        if len(matches) == 1:
            return next(iter(matches.values()))
        if matches:
            raise UnknownPeer(f"{spec!r} matches {len(matches)} orgs: give more of its node id")
        raise UnknownPeer(
            f"no org {spec!r} among the peers this node has met: a grant is encrypted "
            "to the key an org's node announces when it connects"
        )

    async def _download(
        self, key: BlobKey, name: str, org_key: OrgKey | FileKey, own: bool
    ) -> Download:
        local = self._open_local(key, name, org_key, own)
        if local is not None:
            return local
        # Peers that served a damaged copy of this blob are asked last.
        sessions = sorted(
            self.peers.live(),
            key=lambda s: s.info is not None and (s.info.node_id, key) in self._suspects,
        )
        for session in sessions:
            try:
                return await self._open_from_peer(session, key, name, org_key, own)
            except (RemoteError, SessionClosed, DamagedBlob, TimeoutError) as e:
                assert session.info is not None
                level = (
                    log.info if isinstance(e, RemoteError) and e.code == "not_found" else log.warn
                )
                level(
                    "{org} could not serve {blob}: {error}",
                    org=session.info.org,
                    blob=key.blob,
                    error=str(e),
                )
        raise FileNotFound(name)

    def _open_local(
        self, key: BlobKey, name: str, org_key: OrgKey | FileKey, own: bool
    ) -> Download | None:
        f = self.store.open(key)
        if f is None:
            self._held(key)  # forgets a blob gone behind the node's back: a peer's copy may come
            return None
        try:
            header = read_header(f)
            meta = open_metadata(org_key, header)
            if meta.name != name:
                raise DamagedBlob("blob names another file")
            size = plaintext_size(header, self.store.size(key) or 0)
        except (CryptoError, DamagedBlob) as e:
            f.close()
            if own:  # another org's replica may be fine and the imported key wrong
                self.damaged(key, str(e))
            return None
        return _LocalDownload(self, key, org_key, f, name, size)

    def suspect(self, peer: str, key: BlobKey) -> None:
        """Remember that ``peer`` served a damaged copy of ``key`` (until restart)."""
        log.warn("peer {peer} served a damaged copy of {blob}", peer=peer, blob=key.blob)
        self._suspects.add((peer, key))

    def damaged(self, key: BlobKey, why: str) -> None:
        """Drop a local blob that failed verification: peers hold good copies."""
        log.warn("local blob {blob} is damaged ({why}); removing it", blob=key.blob, why=why)
        self.store.delete(key)
        held = self.catalog.get(key)
        if held is not None and not held.deleted:
            self.catalog.forget(key)

    async def _start_fetch(
        self, session: PeerProtocol, key: BlobKey, org_key: OrgKey | FileKey | None, keep: bool
    ) -> tuple[_PeerFetch, Deferred[wire.Message], BlobHeader]:
        """Ask ``session`` for a blob; return once its header arrived (and opened)."""
        fetch = _PeerFetch(self, session, key, org_key, keep)
        reply = session.fetch(wire.Fetch(key.owner, key.blob), fetch)
        reply.addBoth(fetch.ended)
        timer = self.clock.callLater(FETCH_TIMEOUT, reply.cancel)
        try:
            header = await fetch.header
        finally:
            if timer.active():
                timer.cancel()
        try:
            if org_key is not None:
                open_metadata(org_key, header)
        except CryptoError as e:
            reply.cancel()
            fetch.abort()
            raise DamagedBlob(str(e)) from e
        return fetch, reply, header

    async def repair(self, key: BlobKey, version: int) -> str | None:
        """Fetch a good copy of a blob (``version`` or newer) from a live peer that has it.

        Works for any org's blob: only the owner's signature is checked.
        Returns the org of the peer that supplied it, or None.
        """
        for session in self.peers.live():
            assert session.info is not None
            theirs = await _peer_entry(session, key)
            if theirs is None or theirs.deleted or theirs.version < version:
                continue
            if not self.catalog.is_newer(key, theirs.version):
                return None  # it arrived meanwhile
            try:
                await self._fetch_into_store(session, key, None)
            except (RemoteError, SessionClosed, DamagedBlob, TimeoutError) as e:
                log.info(
                    "{org} could not supply {blob}: {error}",
                    org=session.info.org,
                    blob=key.blob,
                    error=str(e),
                )
                continue
            return session.info.org
        return None

    async def _open_from_peer(
        self, session: PeerProtocol, key: BlobKey, name: str, org_key: OrgKey | FileKey, keep: bool
    ) -> Download:
        fetch, reply, header = await self._start_fetch(session, key, org_key, keep)
        try:
            if fetch.size is None:
                raise DamagedBlob("no size announced")
            size = plaintext_size(header, fetch.size)
        except (CryptoError, DamagedBlob) as e:
            reply.cancel()
            fetch.abort()
            raise DamagedBlob(str(e)) from e
        return _PeerDownload(self, name, size, session, fetch, reply)

    async def delete(self, name: str) -> tuple[bool, list[PeerOutcome]]:
        """Remove here and on every live peer, leaving a signed tombstone everywhere.

        Returns whether this node held the file and what each peer said;
        FileNotFound if neither this node nor any live peer holds it.
        """
        started = time.monotonic()
        key = self._key_for(name)
        held = self.catalog.get(key)
        here = held is not None and not held.deleted
        if not here and not await self._held_by_a_peer(key):
            raise FileNotFound(name)
        tomb = Tombstone.sign(self.signer, key.blob, self.next_version())
        self._bury(tomb)
        outcomes = []
        for session in self.peers.live():
            assert session.info is not None
            try:
                reply = await session.request(delete_message(tomb))
                ok = isinstance(reply, wire.Ack)
                outcomes.append(PeerOutcome(session.info.org, session.info.node_id, ok))
            except (RemoteError, SessionClosed) as e:
                outcomes.append(PeerOutcome(session.info.org, session.info.node_id, False, str(e)))
        log.info(
            "delete {blob}: held here {here}, on {removed} of {peers} peers, {seconds:.2f}s",
            blob=key.blob,
            here=here,
            removed=sum(o.ok for o in outcomes),
            peers=len(outcomes),
            seconds=time.monotonic() - started,
        )
        return here, outcomes

    async def _held_by_a_peer(self, key: BlobKey) -> bool:
        for session in self.peers.live():
            entry = await _peer_entry(session, key)
            if entry is not None and not entry.deleted:
                return True
        return False

    def _bury(self, tomb: Tombstone) -> bool:
        """Record a verified tombstone if it is newer than what is held; True if it was."""
        key = BlobKey(tomb.owner, tomb.blob)
        if not self.catalog.is_newer(key, tomb.version):
            return False
        self.store.put_tombstone(key, tomb.to_bytes())
        self.catalog.set(key, Entry(tomb.version, 0, deleted=True))
        return True

    async def peer_listings(self, owner: str) -> dict[str, dict[str, wire.ListEntry]]:
        """What each live peer holds of ``owner``'s namespace, keyed by peer node id."""
        listings: dict[str, dict[str, wire.ListEntry]] = {}
        for session in self.peers.live():
            assert session.info is not None
            try:
                listings[session.info.node_id] = await _list_all(session, owner)
            except (RemoteError, SessionClosed) as e:
                log.warn("could not list {org}: {error}", org=session.info.org, error=str(e))
        return listings

    async def list_files(self, reader: ReadKey | None = None) -> list[FileEntry]:
        """This org's files held here (or, with ``reader``, another org's)."""
        org = reader or self.own
        listings = await self.peer_listings(org.org_id)
        entries = []
        for blob, held in self.catalog.entries(org.org_id):
            if held.deleted:
                continue
            key = BlobKey(org.org_id, blob)
            f = self.store.open(key)
            if f is None:
                continue
            try:
                with f:
                    header = read_header(f)
                    meta = open_metadata(org.key, header)
                    size = plaintext_size(header, self.store.size(key) or 0)
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
        sessions = {s.info.node_id: s for s in self.peers.live() if s.info is not None}
        found = []
        for blob, versions in sorted(newest.items()):
            key = BlobKey(org.org_id, blob)
            if versions[0].deleted or not self.catalog.is_newer(key, versions[0].version):
                continue  # deleted, or held here (listed already)
            holders = [p for p, listing in listings.items() if listing.get(blob) in versions]
            file = await self._peer_file(
                [sessions[p] for p in holders if p in sessions], key, org.key, versions[0].version
            )
            if file is not None:
                found.append(replace(file, replicas=len(holders)))
        return found

    async def _peer_file(
        self, holders: list[PeerProtocol], key: BlobKey, org_key: OrgKey, version: int
    ) -> FileEntry | None:
        """A file's entry from the header a peer holds (its name is in the sealed metadata)."""
        for session in holders:
            try:
                reply = await session.request(wire.Head(key.owner, key.blob))
                if not isinstance(reply, wire.HeadReply):
                    continue
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
        recovered: list[str] = []
        errors: list[str] = []
        newest: dict[str, tuple[wire.ListEntry, list[PeerProtocol]]] = {}
        for session in self.peers.live():
            assert session.info is not None
            try:
                listing = await _list_all(session, self.node_id)
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
            key = BlobKey(self.node_id, blob)
            self._held(key)
            if not self.catalog.is_newer(key, entry.version):
                continue
            if entry.deleted:
                self._bury(Tombstone.sign(self.signer, blob, entry.version))
                continue
            for session in sessions:
                assert session.info is not None
                try:
                    header = await self._fetch_into_store(session, key, self.key)
                    recovered.append(open_metadata(self.key, header).name)
                    break
                except (RemoteError, SessionClosed, DamagedBlob, CryptoError) as e:
                    errors.append(f"{blob[:16]} from {session.info.org}: {e}")
        log.info(
            "recovered {count} files ({errors} errors)", count=len(recovered), errors=len(errors)
        )
        # Peers that missed changes while this node was down hear of them now.
        for session in self.peers.live():
            try:
                await self.catch_up(session)
            except (RemoteError, SessionClosed) as e:
                assert session.info is not None
                errors.append(f"catching up {session.info.org}: {e}")
        return recovered, errors

    async def _fetch_into_store(
        self, session: PeerProtocol, key: BlobKey, org_key: OrgKey | None
    ) -> BlobHeader:
        """Fetch a blob into the store, verifying all of it; return its header."""
        fetch, reply, header = await self._start_fetch(session, key, org_key, keep=True)
        try:
            await reply
            await fetch.complete()
        except BaseException:
            fetch.abort()
            raise
        return header

    def usage(self) -> dict[str, int]:
        return self.catalog.usage()

    # -- anti-entropy and relay

    def session_ready(self, session: PeerProtocol) -> None:
        self.peers.add(session)
        info = session.info
        if info is not None and info.box_key is not None:
            self.known.met(info.node_id, info.org, info.box_key)
        self.sync(session)

    def sync_all(self) -> None:
        """Compare with every live peer (periodically: a refused or failed transfer
        while connected, a quota freed, is put right without waiting for a reconnect)."""
        for session in self.peers.live():
            self.sync(session)

    def sync(self, session: PeerProtocol) -> None:
        """Run catch_up for a peer in the background, one at a time per peer."""
        if session in self._syncing:
            return
        self._syncing.add(session)
        d = Deferred.fromCoroutine(self.catch_up(session))
        d.addErrback(
            lambda f: log.warn(
                "catching up {peer} failed: {error}",
                peer=session.info and session.info.org,
                error=f.getErrorMessage(),
            )
        )
        d.addBoth(lambda _: self._syncing.discard(session))

    async def catch_up(self, session: PeerProtocol) -> int:
        """Bring a peer up to date (it just connected, or periodically); return the changes.

        For this org's namespace, and (relaying) for every other org this node
        holds except the peer's own: compare digests, and when they differ send
        each blob or tombstone the peer lacks or holds an older version of.
        Only ever pushes: a node that lost its store pushes nothing and deletes
        nothing, so `recover` can still bring everything back.
        """
        assert session.info is not None
        peer = session.info.node_id
        owners = [self.node_id]
        if self.relay:
            owners += [o for o in self.catalog.owners() if o not in (self.node_id, peer)]
        sent = 0
        for owner in owners:
            digest, count = self.catalog.digest(owner)
            reply = await session.request(wire.Digest(owner))
            if isinstance(reply, wire.DigestReply) and (reply.digest, reply.count) == (
                digest,
                count,
            ):
                continue
            theirs = await _list_all(session, owner)
            stale = [
                (blob, entry)
                for blob, entry in self.catalog.entries(owner)
                if (other := theirs.get(blob)) is None or other.version < entry.version
            ]
            for blob, entry in stale:
                if session.transport is None:
                    return sent
                sent += await self._offer(session, BlobKey(owner, blob), entry)
        if sent:
            log.info("caught up {org}: sent {sent} changes", org=session.info.org, sent=sent)
        return sent

    async def _offer(self, session: PeerProtocol, key: BlobKey, entry: Entry) -> int:
        """Send one blob or tombstone to a peer; 1 if the peer took it."""
        assert session.info is not None
        try:
            if entry.deleted:
                record = self.store.tombstone(key)
                if record is None:
                    return 0
                await session.request(delete_message(Tombstone.from_bytes(record)))
            else:
                await self._push(session, key, entry.version)
            return 1
        except RemoteError as e:
            if e.code in ("have", "busy", "not_found"):
                return 0
            # Out of room there is expected, and retried each sync: not a warning.
            level = log.info if e.code in ("quota", "disk_full") else log.warn
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

    async def _push(self, session: PeerProtocol, key: BlobKey, version: int) -> None:
        """Stream a stored blob to a peer, as the peer reads it."""
        f = self.store.open(key)
        if f is None:
            return  # deleted meanwhile
        with f:
            size = os.fstat(f.fileno()).st_size
            stream = session.store(wire.Store(key.owner, key.blob, size, version))
            while block := f.read(CHUNK_SIZE):
                await session.when_writable()
                stream.write(block)
            await stream.finish()

    def _relay(self, source: PeerProtocol, key: BlobKey, entry: Entry) -> None:
        """Pass a change received from ``source`` on to the other live peers."""
        if not self.relay:
            return
        for session in self.peers.live():
            if session is source or session.info is None or session.info.node_id == key.owner:
                continue
            Deferred.fromCoroutine(self._offer(session, key, entry))

    # -- SessionHandler: what peers ask of us

    def session_lost(self, session: PeerProtocol, reason: str) -> None:
        self.peers.remove(session, reason)

    def _authorize_write(self, session: PeerProtocol, owner: str) -> None:
        """Writes come from the owner itself, or relayed (signed by the owner) when allowed."""
        assert session.info is not None
        if owner == session.info.node_id or (self.relay and owner != self.node_id):
            return
        log.warn(
            "refused a write into {owner}'s namespace from {org} ({node_id})",
            owner=owner,
            org=session.info.org,
            node_id=session.info.node_id,
        )
        raise RequestRefused("forbidden", "a peer may only write its own org's blobs")

    def open_store(self, session: PeerProtocol, request: wire.Store) -> IncomingReplica:
        self._authorize_write(session, request.owner)
        key = BlobKey(request.owner, request.blob)
        if not self.catalog.is_newer(key, request.version):
            raise RequestRefused("have", "already holds this version or a newer one")
        receiving = self._incoming.get(key)
        if receiving is not None:
            assert session.info is not None
            if not receiving.relayed or session.info.node_id != key.owner:
                raise RequestRefused("busy", "this blob is being received already")
            # The owner's own copy wins over a relayed one: its put waits for our answer.
            receiving.abort("the owner sent it itself")
        announced = request.size or 0
        try:
            growth = max(announced, BLOCK) - charge(self.catalog.get(key))
            self.space.check(key.owner, growth, announced)
        except NoSpace as e:
            assert session.info is not None
            log.warn(
                "refused a replica from {org}: {reason}", org=session.info.org, reason=e.message
            )
            raise RequestRefused(e.code, e.message) from None
        incoming = IncomingReplica(self, session, key, request)
        self._incoming[key] = incoming
        return incoming

    def incoming_done(self, key: BlobKey, incoming: IncomingReplica) -> None:
        if self._incoming.get(key) is incoming:
            del self._incoming[key]

    def replica_stored(self, source: PeerProtocol, key: BlobKey, version: int, size: int) -> None:
        log.info("stored replica {blob} for {owner}", blob=key.blob, owner=key.owner)
        self._relay(source, key, Entry(version, size))

    def open_fetch(self, session: PeerProtocol, request: wire.Fetch) -> FileSource:
        key = BlobKey(request.owner, request.blob)
        f = self.store.open(key)
        if f is None:
            raise RequestRefused("not_found", "no such blob")
        return FileSource(f, self.store.size(key) or 0)

    def answer(self, session: PeerProtocol, request: wire.ControlRequest) -> Deferred[wire.Message]:
        if isinstance(request, wire.Delete):
            return succeed(self._answer_delete(session, request))
        if isinstance(request, wire.Digest):
            digest, count = self.catalog.digest(request.owner)
            return succeed(wire.DigestReply(digest, count))
        if isinstance(request, wire.Head):
            return succeed(self._head(BlobKey(request.owner, request.blob)))
        return succeed(self._listing(request.owner, request.after, request.limit))

    def _head(self, key: BlobKey) -> wire.HeadReply:
        f = self.store.open(key)
        if f is None:
            raise RequestRefused("not_found", "no such blob")
        try:
            with f:
                header = read_header(f)
                size = os.fstat(f.fileno()).st_size
        except CryptoError:
            raise RequestRefused("not_found", "no readable blob") from None
        return wire.HeadReply(size, header.raw.hex())

    def _held(self, key: BlobKey) -> Entry | None:
        """The catalog's entry for ``key``, checked against the disk: a blob that went
        missing behind the node's back is forgotten (and None returned)."""
        held = self.catalog.get(key)
        if held is not None and not held.deleted and not self.store.exists(key):
            self.catalog.forget(key)
            return None
        return held

    def _listing(self, owner: str, after: str | None, limit: int) -> wire.ListReply:
        """A page of what is held, checked against the disk: a listing never claims
        a blob that went missing behind the node's back (it is forgotten instead)."""
        entries: list[wire.ListEntry] = []
        more = True
        while more and len(entries) < limit:
            page, more = self.catalog.page(owner, after, limit - len(entries))
            for blob, entry in page:
                if self._held(BlobKey(owner, blob)) is None:
                    continue
                entries.append(wire.ListEntry(blob, entry.version, entry.deleted))
            if page:
                after = page[-1][0]
        return wire.ListReply(tuple(entries), more)

    def _answer_delete(self, session: PeerProtocol, request: wire.Delete) -> wire.Message:
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
        key = BlobKey(tomb.owner, tomb.blob)
        if self.catalog.is_newer(key, tomb.version):
            # A tombstone costs a block like a blob: a peer's quota bounds them too.
            try:
                self.space.check(key.owner, BLOCK - charge(self.catalog.get(key)), None)
            except NoSpace as e:
                raise RequestRefused(e.code, e.message) from None
        # Without news (this deletion or a newer change is here already) it is still done.
        if self._bury(tomb):
            log.info("deleted replica {blob} for {owner}", blob=key.blob, owner=key.owner)
            self._relay(session, key, Entry(tomb.version, 0, deleted=True))
        return wire.Ack()


def delete_message(tomb: Tombstone) -> wire.Delete:
    """The DELETE that carries a tombstone to a peer."""
    return wire.Delete(
        tomb.owner, tomb.blob, tomb.version, tomb.owner_key.hex(), tomb.signature.hex()
    )


async def _peer_entry(session: PeerProtocol, key: BlobKey) -> wire.ListEntry | None:
    """What a peer holds of one blob: a one-entry listing starting just below its id."""
    before = int(key.blob, 16) - 1
    after = None if before < 0 else f"{before:064x}"
    try:
        reply = await session.request(wire.List(key.owner, after, limit=1))
    except (RemoteError, SessionClosed):
        return None
    if isinstance(reply, wire.ListReply):
        for entry in reply.entries:
            if entry.blob == key.blob:
                return entry
    return None


async def _list_all(session: PeerProtocol, owner: str) -> dict[str, wire.ListEntry]:
    held: dict[str, wire.ListEntry] = {}
    after: str | None = None
    while True:
        reply = await session.request(wire.List(owner, after))
        if not isinstance(reply, wire.ListReply):
            raise RemoteError("bad_reply", "LIST answered with something else")
        held.update((e.blob, e) for e in reply.entries)
        if not reply.more or not reply.entries:
            return held
        after = reply.entries[-1].blob
