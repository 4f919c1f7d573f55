"""Blobs fetched whole from peers into the store: verified as they arrive, kept
only once whole.

Used by `recover` and by the scrub's repair of a damaged replica (a get streams
through get.BlobRead). Which peers to ask, with those that served a damaged copy
of a blob last, is decided here for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import wire
from ..crypto import BlobHeader, CryptoError, OrgKey, SealCheck, open_metadata
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .errors import DamagedBlob
from .holdings import Holdings

log = Logger()

FETCH_TIMEOUT = 30.0  # seconds a peer may take to start answering a FETCH


class Clock(Protocol):
    def callLater(self, delay: float, f: Callable[..., Any], /, *a: Any) -> Any: ...
    def seconds(self) -> float: ...


class PeerFetch:
    """Ciphertext of one blob arriving from a peer into a new local blob, each chunk
    checked against the owner's signature as it comes; committed only once whole.

    `header` fires with the blob's header, or fails if the fetch ends first.
    """

    def __init__(
        self, holdings: Holdings, session: PeerSession, key: BlobKey, version: int | None
    ) -> None:
        self.key = key
        self._holdings = holdings
        self._sender = session.info.node_id
        self._version = version
        self._check = SealCheck(owner=key.owner, blob=key.blob)
        self._writer = holdings.writer(
            key,
            pause=lambda: session.hold_reading(self),
            resume=lambda: session.release_reading(self),
        )
        self.size: int | None = None
        self.received = 0
        self.header: Deferred[BlobHeader] = Deferred()
        self._failed: Exception | None = None

    def started(self, size: int) -> None:
        self.size = size

    def data(self, payload: bytes | memoryview) -> None:
        if self._failed is not None:
            return
        self.received += len(payload)
        self._writer.write(payload)
        try:
            self._check.feed(payload)
        except CryptoError as e:
            self.fail(DamagedBlob(str(e)))
            return
        header = self._check.header
        if header is not None and not self.header.called:
            if self._version is not None and header.version != self._version:
                self.fail(DamagedBlob(f"sent version {header.version}, not {self._version}"))
                return
            self.header.callback(header)

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
        """After the stream ended: check the end, then commit."""
        try:
            if self._failed is not None:
                raise DamagedBlob(str(self._failed))
            if self.size is not None and self.received != self.size:
                raise DamagedBlob(f"peer sent {self.received} of {self.size} bytes")
            header = self._check.finish()
        except (CryptoError, DamagedBlob) as e:
            self.fail(DamagedBlob(str(e)))
            raise DamagedBlob(str(e)) from e
        record = self._check.record
        proof = b"" if record is None else record.to_bytes()
        await self._holdings.publish(self.key, header.version, self._writer, proof, self._sender)

    def abort(self) -> None:
        self._writer.abort()


class Fetcher:
    """Fetches blobs from live peers, remembering who served damaged copies."""

    def __init__(
        self, holdings: Holdings, peers: Callable[[], Sequence[PeerSession]], clock: Clock
    ) -> None:
        self._holdings = holdings
        self._peers = peers
        self.clock = clock
        self._suspects: set[tuple[str, BlobKey]] = set()

    def suspect(self, peer: str, key: BlobKey) -> None:
        """Remember that ``peer`` served a damaged copy of ``key`` (until restart)."""
        log.warn("peer {peer} served a damaged copy of {blob}", peer=peer, blob=key.blob)
        self._suspects.add((peer, key))

    def sources(self, key: BlobKey) -> list[PeerSession]:
        """The live peers to ask for ``key``: those that served it damaged, last."""
        return sorted(self._peers(), key=lambda s: (s.info.node_id, key) in self._suspects)

    async def _start(
        self, session: PeerSession, key: BlobKey, org_key: OrgKey | None, version: int | None
    ) -> tuple[PeerFetch, Deferred[wire.Message], BlobHeader]:
        """Ask ``session`` for a blob (that ``version`` only, if given); return once its
        header arrived (and opened with ``org_key``, if given)."""
        fetch = PeerFetch(self._holdings, session, key, version)
        reply = session.fetch(wire.Fetch(key.owner, key.blob, version), fetch)
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
            # Nobody awaits the reply once given up: its CancelledError is expected.
            reply.addErrback(lambda _: None)
            reply.cancel()
            fetch.abort()
            raise DamagedBlob(str(e)) from e
        return fetch, reply, header

    async def into_store(
        self,
        session: PeerSession,
        key: BlobKey,
        org_key: OrgKey | None,
        version: int | None = None,
    ) -> BlobHeader:
        """Fetch a blob into the store, verifying all of it; return its header."""
        fetch, reply, header = await self._start(session, key, org_key, version)
        try:
            await reply
            await fetch.complete()
        except BaseException:
            fetch.abort()
            raise
        return header

    async def repair(self, key: BlobKey, version: int) -> str | None:
        """Fetch a good copy of a blob (``version`` or newer) from a live peer that has it.

        Works for any org's blob: only the owner's signature is checked.
        Returns the org of the peer that supplied it, or None. Peers that served a
        damaged copy of it before are asked last, as reads do.
        """
        for session in self.sources(key):
            theirs = await PeerClient(session).entry(key)
            if theirs is None or theirs.deleted or theirs.version < version:
                continue
            if not self._holdings.catalog.is_newer(key, theirs.version):
                return None  # it arrived meanwhile
            try:
                await self.into_store(session, key, None, theirs.version)
            except (RemoteError, SessionClosed, DamagedBlob, TimeoutError) as e:
                if isinstance(e, DamagedBlob):
                    self.suspect(session.info.node_id, key)
                log.info(
                    "{org} could not supply {blob}: {error}",
                    org=session.info.org,
                    blob=key.blob,
                    error=str(e),
                )
                continue
            return session.info.org
        return None
