"""What the file logic sees of a peer: a ready session, and a typed client over it.

`PeerSession` is the narrow interface a connected peer offers once its handshake is
done (`protocol.PeerProtocol` implements it; tests use fakes): its identity is known,
so `info` is never None. `PeerClient` turns the request/reply messages of `wire`
into typed calls, so no caller inspects reply types itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from . import merkle, wire
from .crypto import CryptoError, Horizon, Release, Tombstone
from .store import BlobKey

__all__ = [
    "BlobSource",
    "BlobStream",
    "FetchSink",
    "PeerClient",
    "PeerInfo",
    "PeerSession",
    "RemoteError",
    "SessionClosed",
    "delete_message",
    "horizon_message",
    "release_message",
]

READ_BLOCK = 1 << 20  # bytes read at a time from a stored blob sent to a peer


class RemoteError(Exception):
    """The peer answered a request with an Error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SessionClosed(Exception):
    """The session ended before the request completed."""


class BlobSource(Protocol):
    """A stored blob being sent to a peer (a FETCH it asked for, a push): read in
    pieces, each when its Deferred fires (an empty one at the end)."""

    size: int

    def read(self, n: int) -> Deferred[bytes]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class PeerInfo:
    """Who is at the other end, as proven by TLS and announced in HELLO."""

    node_id: str
    org: str
    listen: str
    address: str
    box_key: str | None = None  # where grants to it are encrypted to
    # Its org places its files on chosen peers (--replicas N, --erasure): nobody
    # passes them on to others (relay would put them everywhere).
    placed: bool = False


class BlobStream(Protocol):
    """A STORE being sent: write ciphertext, then finish() to await the answer."""

    @property
    def closed(self) -> bool: ...
    def write(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> Deferred[wire.Message]: ...
    def abort(self, reason: str) -> None: ...


class FetchSink(Protocol):
    """Receives the ciphertext of a FETCH this side asked for."""

    def started(self, size: int) -> None: ...
    def data(self, payload: bytes | memoryview) -> None: ...


class PeerSession(Protocol):
    """A peer whose handshake is done."""

    @property
    def info(self) -> PeerInfo: ...
    @property
    def paused(self) -> bool:
        """The peer reads slower than we write: wait for `when_writable`."""

    @property
    def closed(self) -> bool: ...
    def request(self, message: wire.ControlRequest) -> Deferred[wire.Message]: ...
    def store(self, message: wire.Store) -> BlobStream: ...
    def fetch(self, message: wire.Fetch, sink: FetchSink) -> Deferred[wire.Message]: ...
    def when_writable(self) -> Deferred[None]: ...
    def hold_reading(self, holder: object) -> None: ...
    def release_reading(self, holder: object) -> None: ...


class PeerClient:
    """Typed requests to one peer; a reply of the wrong type is a RemoteError."""

    def __init__(self, session: PeerSession) -> None:
        self.session = session

    async def _ask(self, message: wire.ControlRequest) -> wire.Message:
        return await self.session.request(message)

    async def digest(self, owner: str) -> tuple[str, int]:
        """The peer's digest of what it holds of ``owner``'s namespace, and its count."""
        reply = await self._ask(wire.Digest(owner))
        if not isinstance(reply, wire.DigestReply):
            raise RemoteError("bad_reply", "DIGEST answered with something else")
        return reply.digest, reply.count

    async def children(self, owner: str, prefix: str) -> dict[int, tuple[str, int]]:
        """The peer's digests of the children of ``prefix`` in ``owner``'s digest
        tree (merkle.py): next byte -> (digest, count), the empty ones left out."""
        reply = await self._ask(wire.Digest(owner, prefix, children=True))
        if not isinstance(reply, wire.DigestReply):
            raise RemoteError("bad_reply", "DIGEST answered with something else")
        return {c.byte: (c.digest, c.count) for c in reply.children}

    async def list_prefix(
        self, owner: str, prefix: str, expect: int = wire.MAX_LIST_PAGE
    ) -> dict[str, wire.ListEntry]:
        """The entries the peer holds of ``owner``'s blobs whose ids start with
        ``prefix``: a listing from just below it, until its entries leave it.
        ``expect``: how many the peer said it holds there (a first page of one more
        sees the end of the prefix; a wrong count costs only another page)."""
        held: dict[str, wire.ListEntry] = {}
        after = merkle.list_after(prefix)
        limit = max(1, min(wire.MAX_LIST_PAGE, expect + 1))
        while True:
            reply = await self._ask(wire.List(owner, after, limit))
            limit = wire.MAX_LIST_PAGE
            if not isinstance(reply, wire.ListReply):
                raise RemoteError("bad_reply", "LIST answered with something else")
            if reply.entries and after is not None and reply.entries[0].blob <= after:
                # A page must move on, or a peer could keep this loop going for ever.
                raise RemoteError("bad_reply", "LIST answered entries not after the one asked")
            for e in reply.entries:
                if e.blob.startswith(prefix):
                    held[e.blob] = e
            # Ascending (the decoder checks): once past the prefix, the rest is too.
            last = reply.entries[-1].blob if reply.entries else None
            if not reply.more or last is None or last[: len(prefix)] > prefix:
                return held
            after = last

    async def list_all(self, owner: str) -> dict[str, wire.ListEntry]:
        """Every entry the peer holds of ``owner``'s namespace, page after page."""
        held: dict[str, wire.ListEntry] = {}
        after: str | None = None
        while True:
            reply = await self._ask(wire.List(owner, after))
            if not isinstance(reply, wire.ListReply):
                raise RemoteError("bad_reply", "LIST answered with something else")
            held.update((e.blob, e) for e in reply.entries)
            if not reply.more or not reply.entries:
                return held
            after = reply.entries[-1].blob

    async def entry(self, key: BlobKey) -> wire.ListEntry | None:
        """What the peer holds of one blob (None: nothing, or it would not say)."""
        # A one-entry listing starting just below the blob's id.
        before = int(key.blob, 16) - 1
        after = None if before < 0 else f"{before:064x}"
        try:
            reply = await self._ask(wire.List(key.owner, after, limit=1))
        except (RemoteError, SessionClosed):
            return None
        if isinstance(reply, wire.ListReply):
            for entry in reply.entries:
                if entry.blob == key.blob:
                    return entry
        return None

    async def head(self, key: BlobKey) -> wire.HeadReply:
        """A stored blob's header and size."""
        reply = await self._ask(wire.Head(key.owner, key.blob))
        if not isinstance(reply, wire.HeadReply):
            raise RemoteError("bad_reply", "HEAD answered with something else")
        return reply

    async def delete(self, tomb: Tombstone) -> None:
        """Hand the peer a signed tombstone (RemoteError if it refuses)."""
        reply = await self._ask(delete_message(tomb))
        if not isinstance(reply, wire.Ack):
            raise RemoteError("bad_reply", "DELETE answered with something else")

    async def release(self, release: Release) -> None:
        """Let the peer drop its copy of a blob version (RemoteError if it refuses)."""
        reply = await self._ask(release_message(release))
        if not isinstance(reply, wire.Ack):
            raise RemoteError("bad_reply", "RELEASE answered with something else")

    async def horizon(
        self, owner: str, mine: Horizon | None
    ) -> tuple[Horizon | None, wire.HorizonReply]:
        """Offer the peer this node's horizon of ``owner``'s namespace; return the
        peer's (checked: None if it has none, or one that does not verify) and its reply."""
        reply = await self._ask(horizon_message(owner, mine))
        if not isinstance(reply, wire.HorizonReply):
            raise RemoteError("bad_reply", "HORIZON answered with something else")
        if reply.version is None or reply.key is None or reply.signature is None:
            return None, reply
        try:
            theirs = Horizon(
                owner, bytes.fromhex(reply.key), reply.version, bytes.fromhex(reply.signature)
            ).verify()
        except CryptoError:
            return None, reply
        return theirs, reply

    async def push(self, key: BlobKey, version: int, blob: BlobSource) -> None:
        """Stream a stored blob to the peer as it is read; return once it answered."""

        async def pieces() -> AsyncIterator[bytes]:
            while piece := await blob.read(READ_BLOCK):
                yield piece

        await self._stream(wire.Store(key.owner, key.blob, blob.size, version), pieces())

    async def send(
        self, key: BlobKey, version: int, size: int | None, pieces: Iterable[bytes]
    ) -> None:
        """Stream a blob made as it goes (``pieces``) to the peer; return once it answered."""

        async def made() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        await self._stream(wire.Store(key.owner, key.blob, size, version), made())

    async def _stream(self, request: wire.Store, pieces: AsyncIterator[bytes]) -> None:
        stream = self.session.store(request)
        try:
            async for piece in pieces:
                # A refusal ("have", "busy": usual for a relayed copy) closes the
                # stream: stop reading or making the rest of the blob for nothing then.
                if stream.closed:
                    break
                await self.session.when_writable()
                stream.write(piece)
        except SessionClosed:
            pass  # the stream's answer says so, below
        except BaseException:
            stream.abort("the sender failed")
            raise
        await stream.finish()


def release_message(release: Release) -> wire.Release:
    """The RELEASE that lets one holder drop its copy."""
    return wire.Release(
        release.owner,
        release.blob,
        release.version,
        release.holder,
        release.owner_key.hex(),
        release.signature.hex(),
    )


def horizon_message(owner: str, horizon: Horizon | None) -> wire.Horizon:
    """The HORIZON that offers a namespace's horizon (or asks for one)."""
    if horizon is None:
        return wire.Horizon(owner)
    return wire.Horizon(owner, horizon.version, horizon.owner_key.hex(), horizon.signature.hex())


def delete_message(tomb: Tombstone) -> wire.Delete:
    """The DELETE that carries a tombstone to a peer."""
    return wire.Delete(
        tomb.owner, tomb.blob, tomb.version, tomb.owner_key.hex(), tomb.signature.hex()
    )
