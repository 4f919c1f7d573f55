"""What the node does with files: put, get, delete, list, recover, and serving peers.

Everything here is asynchronous and streaming: plaintext comes in as pieces, is
encrypted once into ~1 MiB ciphertext chunks, and each chunk goes to the local
blob and to every connected peer. Nothing holds a whole file in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .crypto import (
    CHUNK_SIZE,
    FIXED_HEADER_SIZE,
    BlobHeader,
    CryptoError,
    Decryptor,
    Encryptor,
    OrgKey,
    Trailer,
    ciphertext_size,
    header_length,
    open_metadata,
    parse_header,
    plaintext_size,
)
from .diskqueue import DiskQueue, QueuedBlob
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
        self._encryptor = Encryptor(
            server.key, server.node_id, name, version=time.time_ns(), mtime=int(time.time())
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
            (session, session.store(wire.Store(server.node_id, self.blob, announced)))
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
        return Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> PutResult:
        self._upstream = None  # the body is complete: never pause or resume it again
        self._emit(self._encryptor.finalize())
        streamed = time.monotonic() - self._started
        replies = [stream.finish() for _, stream in self._peers]
        try:
            await self._local.commit()
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
                outcomes.append(PeerOutcome(session.info.org, session.info.node_id, False, str(e)))
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
        self, server: FileServer, key: BlobKey, org_key: OrgKey, f: BinaryIO, name: str, size: int
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
    """

    def __init__(
        self, server: FileServer, session: PeerProtocol, key: BlobKey, org_key: OrgKey, keep: bool
    ) -> None:
        self.key = key
        self._decryptor = Decryptor(org_key, owner=key.owner, blob=key.blob)
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
            plain = self._decryptor.feed(payload)
        except CryptoError as e:
            self.fail(DamagedBlob(str(e)))
            return
        if self._decryptor.header is not None and not self.header.called:
            self.header.callback(self._decryptor.header)
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

    async def complete(self) -> Trailer:
        """After the stream ended: check the end, write the last plaintext, commit."""
        try:
            if self._failed is not None:
                raise DamagedBlob(str(self._failed))
            if self.size is not None and self.received != self.size:
                raise DamagedBlob(f"peer sent {self.received} of {self.size} bytes")
            last, trailer = self._decryptor.finish()
        except (CryptoError, DamagedBlob) as e:
            self.fail(DamagedBlob(str(e)))
            raise DamagedBlob(str(e)) from e
        if self._consumer is not None:
            self._consumer.write(last)
        await self._writer.commit()
        return trailer

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
    """A peer's STORE being written to our store."""

    DISK_CHECK_EVERY = 16 << 20

    def __init__(
        self, server: FileServer, session: PeerProtocol, key: BlobKey, size: int | None
    ) -> None:
        self._key = key
        self._size = size
        self._space = server.space
        self._replaces = server.store.size(key) or 0
        self._next_disk_check = self.DISK_CHECK_EVERY
        self._writer = server.disk.blob(
            server.store.begin(key),
            pause=lambda: session.hold_reading(self),
            resume=lambda: session.release_reading(self),
        )
        self._head = bytearray()
        self._checked = False

    def write(self, data: bytes) -> None:
        if self._size is not None and self._writer.written + len(data) > self._size:
            self._writer.abort()
            raise wire.ProtocolError(f"STORE of {self._key.blob} sent more than announced")
        written = self._writer.written + len(data)
        check_disk = written >= self._next_disk_check
        if check_disk:
            self._next_disk_check = written + self.DISK_CHECK_EVERY
        try:
            self._space.check(self._key.owner, written - self._replaces, 0 if check_disk else None)
        except NoSpace as e:
            raise RequestRefused(e.code, e.message) from None
        self._writer.write(data)
        if not self._checked:
            self._check_header(data)

    def _check_header(self, data: bytes) -> None:
        # A holder cannot read the blob, but it can check it is the blob announced.
        self._head += data
        try:
            if len(self._head) < FIXED_HEADER_SIZE:
                return
            total = header_length(bytes(self._head[:FIXED_HEADER_SIZE]))
            if len(self._head) < total:
                return
            header = parse_header(bytes(self._head))
        except CryptoError as e:
            self._writer.abort()
            raise wire.ProtocolError(f"STORE with a malformed blob header: {e}") from e
        if header.owner != self._key.owner or header.blob != self._key.blob:
            self._writer.abort()
            raise wire.ProtocolError("STORE blob header names another blob")
        self._checked = True
        self._head = bytearray()

    def finish(self) -> Deferred[None]:
        if not self._checked:
            self._writer.abort()
            return fail(RequestRefused("bad_request", "blob too short for its header"))
        if self._size is not None and self._writer.written != self._size:
            self._writer.abort()
            return fail(RequestRefused("bad_request", "blob shorter than announced"))
        return self._writer.commit().addCallback(self._committed)

    def _committed(self, _: object) -> None:
        self._space.changed(self._key.owner, self._writer.written - self._replaces)
        log.info("stored replica {blob} for {owner}", blob=self._key.blob, owner=self._key.owner)

    def abort(self, reason: str) -> None:
        self._writer.abort()
        log.info("dropped partial replica {blob}: {reason}", blob=self._key.blob, reason=reason)


class FileServer:
    """The node's file logic, on top of the store, the org key and live peer sessions."""

    def __init__(
        self,
        store: BlobStore,
        key: OrgKey,
        node_id: str,
        peers: PeerRegistry,
        clock: Clock,
        disk: DiskQueue,
        space: SpaceAccount,
    ) -> None:
        self.store = store
        self.disk = disk
        self.space = space
        self._suspects: set[tuple[str, BlobKey]] = set()
        self.key = key
        self.node_id = node_id
        self.own = ReadKey(node_id, "this org", key)
        self.peers = peers
        self.clock = clock

    # -- the owner's operations

    def begin_put(self, name: str, size: int | None, upstream: IPushProducer | None) -> Upload:
        """Start a put (ValueError for a bad name)."""
        self.key.blob_id(name)  # validates the name
        return Upload(self, name, size, upstream)

    def _key_for(self, name: str, reader: ReadKey | None = None) -> BlobKey:
        org = reader or self.own
        return BlobKey(org.org_id, org.key.blob_id(name))

    async def open_download(self, name: str, reader: ReadKey | None = None) -> Download:
        """The local copy if it verifies, else one fetched from a peer (FileNotFound).

        ``reader``: another org's read key, to read that org's file instead.
        """
        org = reader or self.own
        key = self._key_for(name, reader)
        local = self._open_local(key, name, org.key, own=reader is None)
        if local is not None:
            return local
        # Peers that served a damaged copy of this blob are asked last.
        sessions = sorted(
            self.peers.live(),
            key=lambda s: s.info is not None and (s.info.node_id, key) in self._suspects,
        )
        for session in sessions:
            try:
                return await self._open_from_peer(session, key, name, org.key, reader is None)
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

    def _open_local(self, key: BlobKey, name: str, org_key: OrgKey, own: bool) -> Download | None:
        f = self.store.open(key)
        if f is None:
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

    async def _start_fetch(
        self, session: PeerProtocol, key: BlobKey, org_key: OrgKey, keep: bool
    ) -> tuple[_PeerFetch, Deferred[wire.Message], BlobHeader]:
        """Ask ``session`` for a blob; return once its header arrived and opened."""
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
            open_metadata(org_key, header)
        except CryptoError as e:
            reply.cancel()
            fetch.abort()
            raise DamagedBlob(str(e)) from e
        return fetch, reply, header

    async def _open_from_peer(
        self, session: PeerProtocol, key: BlobKey, name: str, org_key: OrgKey, keep: bool
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
        """Remove here and on every live peer; FileNotFound if nobody had it."""
        started = time.monotonic()
        key = self._key_for(name)
        here = self.store.delete(key)
        outcomes = []
        for session in self.peers.live():
            assert session.info is not None
            try:
                reply = await session.request(wire.Delete(key.owner, key.blob))
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

    async def peer_listings(self, owner: str) -> dict[str, set[str]]:
        """Blob ids each live peer holds for ``owner``, keyed by peer node id."""
        listings: dict[str, set[str]] = {}
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
        for blob in self.store.blobs(org.org_id):
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
            replicas = 1 + sum(blob in held for held in listings.values())
            entries.append(FileEntry(meta.name, size, blob, meta.mtime, replicas))
        return sorted(entries, key=lambda e: e.name)

    async def recover(self) -> tuple[list[str], list[str]]:
        """Fetch back every blob of this org that peers hold and we lack.

        Returns (names recovered, errors).
        """
        recovered: list[str] = []
        errors: list[str] = []
        for session in self.peers.live():
            assert session.info is not None
            try:
                held = await _list_all(session, self.node_id)
            except (RemoteError, SessionClosed) as e:
                errors.append(f"{session.info.org}: {e}")
                continue
            for blob in sorted(held):
                key = BlobKey(self.node_id, blob)
                if self.store.exists(key):
                    continue
                try:
                    recovered.append(await self._fetch_to_store(session, key))
                except (RemoteError, SessionClosed, DamagedBlob, CryptoError) as e:
                    errors.append(f"{blob[:16]} from {session.info.org}: {e}")
        log.info(
            "recovered {count} files ({errors} errors)", count=len(recovered), errors=len(errors)
        )
        return recovered, errors

    async def _fetch_to_store(self, session: PeerProtocol, key: BlobKey) -> str:
        """Fetch a blob into the store, verifying all of it; return its file name."""
        fetch, reply, header = await self._start_fetch(session, key, self.key, keep=True)
        try:
            await reply
            await fetch.complete()
        except BaseException:
            fetch.abort()
            raise
        return open_metadata(self.key, header).name

    def usage(self) -> dict[str, int]:
        return self.store.usage()

    # -- SessionHandler: what peers ask of us

    def session_ready(self, session: PeerProtocol) -> None:
        self.peers.add(session)
        Deferred.fromCoroutine(self.catch_up(session)).addErrback(
            lambda f: log.warn(
                "catching up {peer} failed: {error}",
                peer=session.info and session.info.org,
                error=f.getErrorMessage(),
            )
        )

    async def catch_up(self, session: PeerProtocol) -> int:
        """Send a peer that just connected this org's files it lacks (it was down).

        Only pushes what this node holds: a node that lost its store pushes
        nothing and deletes nothing, so `recover` can still bring everything back.
        """
        held = await _list_all(session, self.node_id)
        missing = [b for b in self.store.blobs(self.node_id) if b not in held]
        sent = 0
        for blob in missing:
            if session.transport is None or session.info is None:
                break
            try:
                await self._push(session, BlobKey(self.node_id, blob))
                sent += 1
            except (RemoteError, SessionClosed) as e:
                log.warn(
                    "could not send {blob} to {org}: {error}",
                    blob=blob,
                    org=session.info.org,
                    error=str(e),
                )
        if missing:
            assert session.info is not None
            log.info(
                "caught up {org}: sent {sent} of {missing} missing blobs",
                org=session.info.org,
                sent=sent,
                missing=len(missing),
            )
        return sent

    async def _push(self, session: PeerProtocol, key: BlobKey) -> None:
        """Stream a stored blob of this org to a peer, as the peer reads it."""
        f = self.store.open(key)
        if f is None:
            return  # deleted meanwhile
        with f:
            size = os.fstat(f.fileno()).st_size
            stream = session.store(wire.Store(key.owner, key.blob, size))
            while block := f.read(CHUNK_SIZE):
                await session.when_writable()
                stream.write(block)
            await stream.finish()

    def session_lost(self, session: PeerProtocol, reason: str) -> None:
        self.peers.remove(session, reason)

    def _authorize_write(self, session: PeerProtocol, owner: str) -> None:
        assert session.info is not None
        if owner != session.info.node_id:
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
        announced = request.size or 0
        try:
            self.space.check(key.owner, announced - (self.store.size(key) or 0), announced)
        except NoSpace as e:
            assert session.info is not None
            log.warn(
                "refused a replica from {org}: {reason}", org=session.info.org, reason=e.message
            )
            raise RequestRefused(e.code, e.message) from None
        return IncomingReplica(self, session, key, request.size)

    def open_fetch(self, session: PeerProtocol, request: wire.Fetch) -> FileSource:
        key = BlobKey(request.owner, request.blob)
        f = self.store.open(key)
        if f is None:
            raise RequestRefused("not_found", "no such blob")
        return FileSource(f, self.store.size(key) or 0)

    def answer(
        self, session: PeerProtocol, request: wire.Delete | wire.List
    ) -> Deferred[wire.Message]:
        if isinstance(request, wire.Delete):
            self._authorize_write(session, request.owner)
            key = BlobKey(request.owner, request.blob)
            size = self.store.size(key) or 0
            if not self.store.delete(key):
                raise RequestRefused("not_found", "no such blob")
            self.space.changed(key.owner, -size)
            log.info("deleted replica {blob} for {owner}", blob=key.blob, owner=key.owner)
            return succeed(wire.Ack())
        blobs, more = self.store.blobs_after(request.owner, request.after, request.limit)
        return succeed(wire.ListReply(tuple(blobs), more))


async def _list_all(session: PeerProtocol, owner: str) -> set[str]:
    held: set[str] = set()
    after: str | None = None
    while True:
        reply = await session.request(wire.List(owner, after))
        if not isinstance(reply, wire.ListReply):
            raise RemoteError("bad_reply", "LIST answered with something else")
        held.update(reply.blobs)
        if not reply.more or not reply.blobs:
            return held
        after = reply.blobs[-1]
