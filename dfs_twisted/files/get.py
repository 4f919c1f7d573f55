"""Downloads: a file's plaintext, from the local copy or a peer's, streamed to a consumer.

A download reads one blob version, chunk by chunk; each chunk is checked against
the owner's signature before its plaintext is released (crypto.Decryptor). All
copies of a version are byte-identical, so when the copy being read turns out
damaged at some chunk, or the peer serving it goes away, the same response goes
on from the next holder at that very chunk: the reader sees the right bytes and
no error. The local copy is repaired on the way (from its good chunks and the
peer's), and restored whole when it was missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import wire
from ..catalog import Entry
from ..crypto import (
    BlobHeader,
    CryptoError,
    Decryptor,
    FileKey,
    OrgKey,
    open_metadata,
    parse_header,
    plaintext_size,
)
from ..diskqueue import DiskQueue, QueuedBlob
from ..grants import Grant
from ..keys import ReadKey
from ..ledger import Ledger
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobFile, BlobKey
from .errors import DamagedBlob, FileNotFound, NewestUnavailable
from .fetch import FETCH_TIMEOUT, Clock, Fetcher
from .holdings import Holdings, read_header
from .owner import Owner

log = Logger()

Feed = Callable[[bytes | memoryview], None]
# What makes a source give up, so that the next one takes over.
SOURCE_FAILURES = (CryptoError, DamagedBlob, RemoteError, SessionClosed, TimeoutError)


class Download:
    """A file's plaintext, ready to stream to a consumer (an HTTP response)."""

    def __init__(self, name: str, blob: str, size: int, source: str) -> None:
        self.name = name
        self.blob = blob  # what logs may name: never the file name
        self.size = size
        self.source = source  # "local" or the org of the peer it starts from

    def stream_to(self, consumer: IConsumer) -> Deferred[None]:
        raise NotImplementedError


@implementer(IPushProducer)
class _Flow:
    """The consumer's pace: a slow client pauses the reading (and the peer feeding it)."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiters: list[Deferred[None]] = []
        self._session: PeerSession | None = None

    def reading_from(self, session: PeerSession | None) -> None:
        """The peer connection to pause with the consumer (None: none)."""
        if self._session is not None:
            self._session.release_reading(self)
        self._session = session
        if session is not None and self.paused:
            session.hold_reading(self)

    async def ready(self) -> None:
        """Once the consumer wants more (SessionClosed if it went away)."""
        while self.paused and not self.stopped:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            await waiter
        if self.stopped:
            raise SessionClosed("the reader went away")

    def pauseProducing(self) -> None:
        self.paused = True
        if self._session is not None:
            self._session.hold_reading(self)

    def resumeProducing(self) -> None:
        self.paused = False
        if self._session is not None:
            self._session.release_reading(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()


class Source(Protocol):
    name: str

    async def read(self, offset: int, feed: Feed, flow: _Flow) -> None:
        """Feed the blob's bytes from ``offset`` to the end; raise if this copy fails."""


class _LocalSource:
    name = "local"

    def __init__(self, f: BlobFile, header: BlobHeader, disk: DiskQueue) -> None:
        self.file = f
        self._header = header
        self._disk = disk

    async def read(self, offset: int, feed: Feed, flow: _Flow) -> None:
        # A chunk at a time, each checked whole without a copy. A read waits for the
        # disk (blobs are read past the page cache): it runs on a disk thread, the
        # next chunk's while this one is checked and sent.
        self.file.seek(offset)
        size = len(self._header.raw) if offset == 0 else self._header.span
        reading = self._disk.read(self.file.read, size)
        while True:
            data = await reading
            if not data:
                return
            reading = self._disk.read(self.file.read, self._header.span)
            try:
                await flow.ready()
                feed(data)
            except BaseException:
                # The caller reads the file again or closes it next: not while a
                # thread reads it.
                await _settled(reading)
                raise


async def _settled(d: Deferred[object]) -> None:
    try:
        await d
    except Exception:
        pass  # what the failure that ends the read says matters, not this read's


class _PeerSource:
    """A peer's copy, from any offset. The first peer of a download starts its fetch
    before the download is handed out (`start`), so that a peer that will not serve
    is found out while the reader can still be told plainly."""

    def __init__(self, session: PeerSession, key: BlobKey, version: int, clock: Clock) -> None:
        self.session = session
        self.name = session.info.org
        self._key = key
        self._version = version
        self._clock = clock
        self._started: _Fetching | None = None

    async def start(self) -> None:
        """Ask for the whole blob now; return once the peer answered that it sends it."""
        fetching = self._fetch(0)
        self._started = fetching
        await fetching.answered()

    def _fetch(self, offset: int) -> _Fetching:
        request = wire.Fetch(self._key.owner, self._key.blob, self._version, offset)
        return _Fetching(self.session, request, offset, self._clock)

    async def read(self, offset: int, feed: Feed, flow: _Flow) -> None:
        fetching, self._started = self._started, None
        if fetching is None or offset != 0:
            if fetching is not None:
                fetching.cancel()
            fetching = self._fetch(offset)
        flow.reading_from(self.session)
        try:
            await fetching.into(feed)
        finally:
            flow.reading_from(None)


class _Fetching:
    """One FETCH under way: its bytes kept until a feed takes them, an error in the
    feed ending it, and a peer that does not start answering given up."""

    def __init__(
        self, session: PeerSession, request: wire.Fetch, offset: int, clock: Clock
    ) -> None:
        self._offset = offset
        self._feed: Feed | None = None
        self._held: list[bytes | memoryview] = []
        self._answered: Deferred[None] = Deferred()
        self.size: int | None = None
        self.received = 0
        self.error: BaseException | None = None
        self.reply = session.fetch(request, self)
        self.reply.addErrback(self._unanswered)
        self._timer = clock.callLater(FETCH_TIMEOUT, self._silent)

    def _silent(self) -> None:
        if self.size is None:
            self.error = TimeoutError(f"no answer in {FETCH_TIMEOUT:.0f}s")
            self.reply.cancel()

    def _unanswered(self, failure: Failure) -> Failure:
        if self._timer.active():
            self._timer.cancel()
        if not self._answered.called:
            self._answered.errback(failure)
        return failure

    async def answered(self) -> None:
        """Once the peer answered that it sends the blob (its refusal, raised)."""
        try:
            await self._answered
        except CancelledError:
            self.reply.addErrback(lambda _: None)
            raise self.error or SessionClosed("fetch cancelled") from None
        except BaseException:
            self.reply.addErrback(lambda _: None)  # raised here: nobody reads it again
            raise

    def cancel(self) -> None:
        self.reply.addErrback(lambda _: None)
        self.reply.cancel()

    # FetchSink
    def started(self, size: int) -> None:
        self.size = size
        if self._timer.active():
            self._timer.cancel()
        if not self._answered.called:
            self._answered.callback(None)

    def data(self, payload: bytes | memoryview) -> None:
        if self.error is not None:
            return
        self.received += len(payload)
        if self._feed is None:
            self._held.append(payload)
            return
        try:
            self._feed(payload)
        except BaseException as e:
            self.error = e
            self.reply.cancel()

    async def into(self, feed: Feed) -> None:
        """Feed the bytes (those held first) until the peer ends the stream."""
        held, self._held = self._held, []
        self._feed = feed
        try:
            for payload in held:
                feed(payload)
            await self.reply
        except CancelledError:
            raise self.error or SessionClosed("fetch cancelled") from None
        except BaseException:
            self.cancel()
            raise
        finally:
            if self._timer.active():
                self._timer.cancel()
        if self.error is not None:
            raise self.error
        if self.size is not None and self.received != self.size - self._offset:
            raise DamagedBlob(f"peer sent {self.received} of {self.size - self._offset} bytes")


class BlobRead(Download):
    """One blob version, read from the first source that can serve each chunk."""

    def __init__(
        self,
        holdings: Holdings,
        fetcher: Fetcher,
        clock: Clock,
        key: BlobKey,
        header: BlobHeader,
        org_key: OrgKey | FileKey,
        name: str,
        size: int,
        first: _LocalSource | _PeerSource,
        keep: bool,
    ) -> None:
        super().__init__(name, key.blob, size, first.name)
        self._holdings = holdings
        self._fetcher = fetcher
        self._clock = clock
        self._key = key
        self._header = header
        self._org_key = org_key
        self._first = first
        self._keep = keep  # this node keeps a copy: repair or restore it
        self._writer: QueuedBlob | None = None
        self._sender = ""

    def stream_to(self, consumer: IConsumer) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stream(consumer))

    def _sources(self) -> list[_LocalSource | _PeerSource]:
        """The first source, then every live peer not tried yet (suspects last)."""
        version = self._header.version
        rest: list[_LocalSource | _PeerSource] = [
            _PeerSource(s, self._key, version, self._clock)
            for s in self._fetcher.sources(self._key)
            if not (isinstance(self._first, _PeerSource) and s is self._first.session)
        ]
        return [self._first, *rest]

    async def _stream(self, consumer: IConsumer) -> None:
        flow = _Flow()
        consumer.registerProducer(flow, True)
        decryptor = self._decryptor()
        offset = 0
        try:
            for source in self._sources():
                if isinstance(source, _PeerSource) and self._keep and self._writer is None:
                    self._start_copy(source, offset)
                feed = _plain_to(consumer, decryptor)
                try:
                    await source.read(offset, feed, flow)
                    last, record = decryptor.finish()
                except SOURCE_FAILURES as e:
                    if flow.stopped:
                        raise
                    self._failed(source, e)
                    if decryptor.header is None:
                        decryptor, offset = self._decryptor(), 0
                    else:
                        offset = decryptor.resume()
                    continue
                consumer.write(last)
                if self._writer is not None and record is not None:
                    await self._holdings.publish(
                        self._key, record.version, self._writer, record.to_bytes(), self._sender
                    )
                    self._writer = None
                    log.info(
                        "restored local copy of {blob} from {org}", blob=self.blob, org=source.name
                    )
                return
            raise DamagedBlob("no holder could serve the rest of it")
        finally:
            if isinstance(self._first, _LocalSource):
                self._first.file.close()
            if self._writer is not None:
                self._writer.abort()
            consumer.unregisterProducer()
            flow.reading_from(None)

    def _decryptor(self) -> Decryptor:
        return Decryptor(
            self._org_key,
            owner=self._key.owner,
            blob=self._key.blob,
            version=self._header.version,
            verified=self._copy_chunk,
        )

    def _copy_chunk(self, chunk: memoryview) -> None:
        if self._writer is not None:
            self._writer.write(bytes(chunk))

    def _start_copy(self, source: _PeerSource, offset: int) -> None:
        """Keep what is read from here on: a new local copy, made of the local one's
        good chunks (if any) and the peer's."""
        self._sender = source.session.info.node_id
        writer = self._holdings.writer(self._key)
        writer.write(self._header.raw)
        if isinstance(self._first, _LocalSource) and offset > len(self._header.raw):
            f = self._first.file
            f.seek(len(self._header.raw))
            left = offset - len(self._header.raw)
            while left:
                data = f.read(min(left, 1 << 20))
                writer.write(data)
                left -= len(data)
        self._writer = writer

    def _failed(self, source: _LocalSource | _PeerSource, error: BaseException) -> None:
        if isinstance(source, _LocalSource):
            log.warn(
                "local copy of {blob} failed ({error}); going on from a peer",
                blob=self.blob,
                error=str(error),
            )
            if self._keep:
                self._holdings.damaged(self._key, str(error))
            return
        if isinstance(error, CryptoError | DamagedBlob):
            self._fetcher.suspect(source.session.info.node_id, self._key)
        level = (
            log.info if isinstance(error, RemoteError) and error.code == "not_found" else log.warn
        )
        level(
            "{org} could not serve {blob}: {error}; going on from the next holder",
            org=source.name,
            blob=self.blob,
            error=str(error),
        )


def _plain_to(consumer: IConsumer, decryptor: Decryptor) -> Feed:
    """Blob bytes in, checked plaintext out to the consumer."""

    def feed(data: bytes | memoryview) -> None:
        consumer.write(decryptor.feed(data))

    return feed


class Reader:
    """Opens downloads: this org's files, another org's with its read key, granted ones.

    This org's files are served only at their newest version: the one the ledger
    recorded (or, if this node knows nothing of the file, the newest one a peer
    proves with this org's signature). When no copy of it can be had, the reader
    is told so; an older version is never served in its place.
    """

    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        ledger: Ledger,
        fetcher: Fetcher,
        clock: Clock,
        rebuild: Callable[[BlobKey, int], Awaitable[bool]] | None = None,
    ) -> None:
        """``rebuild``: brings a version of this org's file back from its shares."""
        self._owner = owner
        self._holdings = holdings
        self._ledger = ledger
        self._fetcher = fetcher
        self._clock = clock
        self._rebuild = rebuild

    async def open_download(self, name: str, reader: ReadKey | None = None) -> Download:
        """The local copy if it verifies, else one fetched from a peer (FileNotFound).

        ``reader``: another org's read key, to read that org's file instead.
        """
        if reader is not None:
            key = self._owner.key_for(name, reader)
            held = self._holdings.catalog.get(key)
            if held is not None and held.deleted:
                raise FileNotFound(name)
            return await self._download(key, name, reader.key, False, None)
        key = self._owner.key_for(name)
        newest = await self.newest(key)
        if newest is None or newest.deleted:
            raise FileNotFound(name)
        try:
            return await self._download(key, name, self._owner.key, True, newest.version)
        except FileNotFound:
            raise NewestUnavailable(name, newest.version) from None

    async def newest(self, key: BlobKey) -> Entry | None:
        """This org's newest version of a blob: as written here, else as proven by peers."""
        known = [
            Entry(e.version, 0, e.deleted)
            for e in (self._ledger.get(key.blob), self._holdings.catalog.get(key))
            if e is not None
        ]
        if not known:
            for session in self._fetcher.sources(key):
                claim = await PeerClient(session).entry(key)
                if claim is not None and self._owner.proves(key.blob, claim, self._ledger.newest):
                    known.append(Entry(claim.version, 0, claim.deleted))
        return max(known, key=lambda e: e.version, default=None)

    async def open_granted(self, grant: Grant) -> Download:
        """The one file version a grant to this node opens (GrantError, FileNotFound)."""
        file = grant.open(self._owner.box, self._owner.node_id)
        key = BlobKey(grant.owner, grant.blob)
        try:
            return await self._download(key, grant.name, file, False, grant.version)
        except FileNotFound:
            raise FileNotFound(
                f"{grant.name} of {grant.owner_org}: not on this node or its connected peers, "
                "or changed since it was shared (a grant reads the version it was made for)"
            ) from None

    async def _download(
        self, key: BlobKey, name: str, org_key: OrgKey | FileKey, own: bool, version: int | None
    ) -> Download:
        """The local copy, else a peer's; only of ``version``, when given."""
        local = self._open_local(key, name, org_key, own, version)
        if local is not None:
            return local
        for session in self._fetcher.sources(key):
            try:
                return await self._open_from_peer(session, key, name, org_key, own, version)
            except SOURCE_FAILURES as e:
                level = (
                    log.info if isinstance(e, RemoteError) and e.code == "not_found" else log.warn
                )
                level(
                    "{org} could not serve {blob}: {error}",
                    org=session.info.org,
                    blob=key.blob,
                    error=str(e),
                )
        # No peer holds a copy: with erasure coding, the shares peers hold rebuild it.
        if own and version is not None and self._rebuild is not None:
            if await self._rebuild(key, version):
                local = self._open_local(key, name, org_key, own, version)
                if local is not None:
                    return local
        raise FileNotFound(name)

    def _read(
        self,
        key: BlobKey,
        header: BlobHeader,
        org_key: OrgKey | FileKey,
        name: str,
        size: int,
        first: _LocalSource | _PeerSource,
        keep: bool,
    ) -> BlobRead:
        return BlobRead(
            self._holdings,
            self._fetcher,
            self._clock,
            key,
            header,
            org_key,
            name,
            size,
            first,
            keep,
        )

    def _open_local(
        self, key: BlobKey, name: str, org_key: OrgKey | FileKey, own: bool, version: int | None
    ) -> Download | None:
        # A blob gone behind the node's back is forgotten: a peer's copy may come.
        f = self._holdings.open(key)
        if f is None:
            return None
        try:
            header = read_header(f)
            if version is not None and header.version != version:
                f.close()
                return None  # an older copy (or another version a grant does not open)
            meta = open_metadata(org_key, header)
            if meta.name != name:
                raise DamagedBlob("blob names another file")
            size = plaintext_size(header, self._holdings.store.size(key) or 0)
        except (CryptoError, DamagedBlob) as e:
            f.close()
            if own:  # another org's replica may be fine and the imported key wrong
                self._holdings.damaged(key, str(e))
            return None
        # Another org's replica damaged mid-read is not ours to repair: only ours is kept.
        local = _LocalSource(f, header, self._holdings.disk)
        return self._read(key, header, org_key, name, size, local, own)

    async def _open_from_peer(
        self,
        session: PeerSession,
        key: BlobKey,
        name: str,
        org_key: OrgKey | FileKey,
        keep: bool,
        version: int | None,
    ) -> Download:
        """A download from ``session``, once its header of the blob (of ``version``, or
        whichever it holds) opened with the key and named the file asked for."""
        reply = await PeerClient(session).head(key)
        try:
            header = parse_header(bytes.fromhex(reply.header))
            if (header.owner, header.blob) != (key.owner, key.blob):
                raise DamagedBlob("the header names another blob")
            if version is not None and header.version != version:
                raise RemoteError(wire.Code.NOT_FOUND, f"holds version {header.version}")
            if open_metadata(org_key, header).name != name:
                raise DamagedBlob("blob names another file")
            size = plaintext_size(header, reply.size)
        except CryptoError as e:
            self._fetcher.suspect(session.info.node_id, key)
            raise DamagedBlob(str(e)) from e
        source = _PeerSource(session, key, header.version, self._clock)
        await source.start()
        return self._read(key, header, org_key, name, size, source, keep)
