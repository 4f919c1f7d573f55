"""Downloads: a file's plaintext from the local copy, or from a peer when that is
missing or damaged (which then restores the local copy), streamed to a consumer."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.logger import Logger
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
    plaintext_size,
)
from ..grants import Grant
from ..keys import ReadKey
from ..ledger import Ledger
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .errors import DamagedBlob, FileNotFound, NewestUnavailable
from .fetch import Fetcher, PeerFetch
from .holdings import Holdings, read_header
from .owner import Owner

log = Logger()


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
        damaged: Callable[[BlobKey, str], None],
        key: BlobKey,
        org_key: OrgKey | FileKey,
        f: BinaryIO,
        header: BlobHeader,
        name: str,
        size: int,
    ) -> None:
        super().__init__(name, key.blob, size, "local")
        self._damaged = damaged
        self._key = key
        self._file = f
        # Read a chunk at a time: each read is opened whole, without a copy.
        self._next_read = len(header.raw)
        self._span = header.span
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
            chunk = self._file.read(self._next_read)
            self._next_read = self._span
            if chunk:
                self._consumer.write(self._decryptor.feed(chunk))
                return
            last, _ = self._decryptor.finish()
            self._consumer.write(last)
        except CryptoError as e:
            self._close()
            self._damaged(self._key, str(e))
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


@implementer(IPushProducer)
class _SessionThrottle:
    """Lets a slow HTTP client pause the peer connection feeding it."""

    def __init__(self, session: PeerSession) -> None:
        self._session = session

    def pauseProducing(self) -> None:
        self._session.hold_reading(self)

    def resumeProducing(self) -> None:
        self._session.release_reading(self)

    def stopProducing(self) -> None:
        self._session.release_reading(self)


class _PeerDownload(Download):
    def __init__(
        self,
        fetcher: Fetcher,
        name: str,
        size: int,
        session: PeerSession,
        fetch: PeerFetch,
        reply: Deferred[wire.Message],
    ) -> None:
        super().__init__(name, fetch.key.blob, size, session.info.org)
        self._fetcher = fetcher
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
            self._fetcher.suspect(self._session.info.node_id, self._fetch.key)
            raise
        except BaseException:
            self._fetch.abort()
            raise
        finally:
            consumer.unregisterProducer()
            # Never leave the peer connection paused on behalf of a finished download.
            throttle.stopProducing()


class Reader:
    """Opens downloads: this org's files, another org's with its read key, granted ones.

    This org's files are served only at their newest version: the one the ledger
    recorded (or, if this node knows nothing of the file, the newest one a peer
    proves with this org's signature). When no copy of it can be had, the reader
    is told so; an older version is never served in its place.
    """

    def __init__(self, owner: Owner, holdings: Holdings, ledger: Ledger, fetcher: Fetcher) -> None:
        self._owner = owner
        self._holdings = holdings
        self._ledger = ledger
        self._fetcher = fetcher

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
            except (RemoteError, SessionClosed, DamagedBlob, TimeoutError) as e:
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
        return _LocalDownload(self._holdings.damaged, key, org_key, f, header, name, size)

    async def _open_from_peer(
        self,
        session: PeerSession,
        key: BlobKey,
        name: str,
        org_key: OrgKey | FileKey,
        keep: bool,
        version: int | None,
    ) -> Download:
        fetch, reply, header = await self._fetcher.start(session, key, org_key, keep, version)
        try:
            if fetch.size is None:
                raise DamagedBlob("no size announced")
            size = plaintext_size(header, fetch.size)
        except (CryptoError, DamagedBlob) as e:
            reply.cancel()
            fetch.abort()
            raise DamagedBlob(str(e)) from e
        return _PeerDownload(self._fetcher, name, size, session, fetch, reply)


__all__ = ["Download", "Reader"]
