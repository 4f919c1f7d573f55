"""A peer that speaks the real protocol but lies: a node's own `files.Server`, a few
answers changed.

`Liar` takes over the answers of a started node's `files.server` (its own methods
are replaced on that object), so every session of that node, open already or not,
is answered by it: real TLS, real frames, real blobs, only the chosen answers
forged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed

from dfs_twisted import wire
from dfs_twisted.files.serve import IncomingReplica
from dfs_twisted.node import NodeService
from dfs_twisted.protocol import BlobSource, RequestRefused
from dfs_twisted.session import PeerSession, RemoteError
from dfs_twisted.store import BlobKey

from .fakes import Source

MAX_VERSION = 2**64 - 1

Forgery = Callable[[wire.ListReply], wire.ListReply]
HorizonForgery = Callable[[wire.HorizonReply], wire.HorizonReply]


class Liar:
    """The node's own answers, except those overridden by the attributes below."""

    def __init__(self, node: NodeService) -> None:
        self.real = node.files.server
        self.forge_listing: Forgery | None = None  # rewrites every LIST answer
        self.forge_horizon: HorizonForgery | None = None  # rewrites every HORIZON answer
        self.refuse_fetch = False  # answers every FETCH "not_found"
        self.flip_at: int | None = None  # serves blobs with this byte flipped
        self.cut_after: int | None = None  # drops the connection after serving this much
        self.forged: dict[str, bytes] = {}  # blob id -> what to serve instead of it
        self.claim_have = False  # answers every STORE "have", storing nothing
        self._store, self._fetch, self._answer = (
            self.real.open_store,
            self.real.open_fetch,
            self.real.answer,
        )
        for name in ("open_store", "open_fetch", "answer"):
            setattr(self.real, name, getattr(self, name))

    def open_store(self, session: PeerSession, request: wire.Store) -> IncomingReplica:
        if self.claim_have:
            raise RequestRefused(wire.Code.HAVE, "already holds this version")
        return self._store(session, request)

    def open_fetch(self, session: PeerSession, request: wire.Fetch) -> Deferred[BlobSource]:
        if self.refuse_fetch:
            raise RequestRefused(wire.Code.NOT_FOUND, "no such blob")
        if request.blob in self.forged:
            data = self.forged[request.blob]
            return succeed(_Served(Source(data[request.offset :]), len(data), request.offset, self))
        return self._fetch(session, request).addCallback(
            lambda source: _Served(source, source.size, request.offset, self, session)
        )

    def answer(self, session: PeerSession, request: wire.ControlRequest) -> Deferred[wire.Message]:
        if isinstance(request, wire.List) and self.forge_listing is not None:
            real = self._answer(session, request)
            forge = self.forge_listing
            return real.addCallback(
                lambda reply: forge(reply) if isinstance(reply, wire.ListReply) else reply
            )
        if isinstance(request, wire.Horizon) and self.forge_horizon is not None:
            real = self._answer(session, request)
            lie = self.forge_horizon
            return real.addCallback(
                lambda reply: lie(reply) if isinstance(reply, wire.HorizonReply) else reply
            )
        return self._answer(session, request)


class _Served:
    """What a liar serves: a blob's bytes, one flipped, or cut short with the link."""

    def __init__(
        self,
        source: BlobSource,
        size: int,
        offset: int,
        liar: Liar,
        session: PeerSession | None = None,
    ) -> None:
        self._source = source
        self.size = size
        self._at = offset  # the blob offset of the next byte read
        self._liar = liar
        self._session = session

    def read(self, n: int) -> Deferred[bytes]:
        return self._source.read(n).addCallback(self._lie)

    def _lie(self, piece: bytes) -> bytes:
        data = bytearray(piece)
        flip = self._liar.flip_at
        if flip is not None and self._at <= flip < self._at + len(data):
            data[flip - self._at] ^= 0x01
        cut = self._liar.cut_after
        if cut is not None and self._session is not None and self._at + len(data) >= cut:
            self._liar.cut_after = None  # once: the reads until the cut lands go nowhere
            protocol: Any = self._session
            reactor.callLater(0, protocol.transport.abortConnection)
        self._at += len(data)
        return bytes(data)

    def close(self) -> None:
        self._source.close()


def deleted_at_max(reply: wire.ListReply) -> wire.ListReply:
    """Every blob claimed deleted at the highest version, with a made-up proof."""
    return wire.ListReply(
        tuple(wire.ListEntry(e.blob, MAX_VERSION, True, "ab" * 64) for e in reply.entries),
        reply.more,
    )


def newer_with_replayed_proof(reply: wire.ListReply) -> wire.ListReply:
    """Every blob claimed at a far newer version, showing its real (older) record."""
    return wire.ListReply(
        tuple(
            wire.ListEntry(e.blob, e.version + 10**15, e.deleted, e.proof) for e in reply.entries
        ),
        reply.more,
    )


def naming_no_one(reply: wire.HorizonReply) -> wire.HorizonReply:
    """Claims to have met no node at all (so that none would be waited for)."""
    return wire.HorizonReply(reply.version, reply.key, reply.signature, (), True)


__all__ = ["Liar", "deleted_at_max", "naming_no_one", "newer_with_replayed_proof", "succeed"]


async def store_blob(session: PeerSession, key: BlobKey, version: int, data: bytes) -> str:
    """STORE ``data`` as a version of ``key`` through the real protocol: "ok" or the
    refusal's code."""
    stream = session.store(wire.Store(key.owner, key.blob, len(data), version))
    stream.write(data)
    try:
        await stream.finish()
    except RemoteError as e:
        return e.code
    return "ok"
