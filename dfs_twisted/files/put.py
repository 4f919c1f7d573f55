"""A put: plaintext in, encrypted once, ciphertext to the local store and every live peer
(or, with erasure coding, a share of it to each peer placement chose)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger

from .. import wire
from ..crypto import CHUNK_SIZE, Encryptor, ciphertext_size
from ..ledger import Ledger, LedgerEntry
from ..session import BlobStream, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .audit import Auditor
from .holdings import Holdings
from .owner import Owner
from .placement import ROOM_CODES, Placement
from .shares import ShareMaker

log = Logger()


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
    erasure: bool = False  # the peers were sent shares, not copies

    @property
    def replicas(self) -> int:
        """Nodes holding a durable copy, this one included."""
        return 1 if self.erasure else 1 + sum(p.ok for p in self.peers)

    @property
    def shares(self) -> int | None:
        """Peers holding a durable share (None: no erasure coding)."""
        return sum(p.ok for p in self.peers) if self.erasure else None


def recipients(
    placement: Placement, blob: str, live: Sequence[PeerSession]
) -> tuple[list[PeerSession], list[int]]:
    """The live peers a put of ``blob`` streams to now, and (with erasure coding) the
    index of the share each gets; peers placed but away get theirs from a later sync."""
    if placement.erasure is None:
        targets = set(placement.targets(blob))
        return [s for s in live if s.info.node_id in targets], []
    sessions = {s.info.node_id: s for s in live}
    slots = [(i, p) for i, p in enumerate(placement.slots(blob)) if p in sessions]
    return [sessions[p] for _, p in slots], [i for i, _ in slots]


class Upload:
    """One put: plaintext in, ciphertext to the local store and to every live peer
    (or, with erasure coding, a share of it to each peer given)."""

    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        ledger: Ledger,
        auditor: Auditor,
        sessions: Sequence[PeerSession],
        name: str,
        size: int | None,
        upstream: IPushProducer | None,
        ended: Callable[[Upload], None],
        placement: Placement,
        shares: Sequence[int] = (),
    ) -> None:
        """``shares``: with erasure coding, the index of the share each session gets."""
        self._holdings = holdings
        self._ledger = ledger
        self._auditor = auditor
        self._name = name
        self._upstream = upstream
        self._ended = ended
        self._placement = placement
        # Why the uploader is paused: slow peers, a full disk queue.
        self._holds: set[object] = set()
        self.version = holdings.next_version(owner.node_id, ledger.newest)
        self._mtime = int(time.time())
        self._encryptor = Encryptor(owner.key, owner.signer, name, self.version, mtime=self._mtime)
        self.blob = self._encryptor.blob
        self.key = BlobKey(owner.node_id, self.blob)
        self._started = time.monotonic()
        self._local = holdings.writer(
            self.key, pause=lambda: self._hold("disk"), resume=lambda: self._release("disk")
        )
        announced = (
            None if size is None else ciphertext_size(len(self._encryptor.header), CHUNK_SIZE, size)
        )
        self._maker: ShareMaker | None = None
        if placement.erasure is None:
            request = wire.Store(owner.node_id, self.blob, announced, self.version)
            self._peers: list[tuple[PeerSession, BlobStream, BlobKey]] = [
                (session, session.store(request), self.key) for session in sessions
            ]
        else:
            maker = self._maker = ShareMaker(
                owner, placement.erasure, name, self.version, self._mtime, shares
            )
            self._peers = []
            for n, (session, share) in enumerate(zip(sessions, maker.blobs, strict=True)):
                size = maker.announced(n, announced)
                stream = session.store(wire.Store(owner.node_id, share, size, self.version))
                self._peers.append((session, stream, BlobKey(owner.node_id, share)))
            self._send_shares([[header] for header in maker.headers()])
        self._emit(self._encryptor.header)

    def write(self, data: bytes) -> None:
        for chunk in self._encryptor.update(data):
            self._emit(chunk)
        for session, stream, _ in self._peers:
            if session.paused and not stream.closed and session not in self._holds:
                self._hold(session)
                session.when_writable().addBoth(self._writable, session)

    def _writable(self, _: object, session: PeerSession) -> None:
        self._release(session)

    def _emit(self, ciphertext: bytes) -> None:
        self._local.write(ciphertext)
        if self._maker is not None:
            self._send_shares(self._maker.update(ciphertext))
            return
        for _, stream, _ in self._peers:
            stream.write(ciphertext)

    def _send_shares(self, pieces: list[list[bytes]]) -> None:
        for (_, stream, _), share in zip(self._peers, pieces, strict=True):
            for piece in share:
                stream.write(piece)

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
        d.addBoth(self._end)
        return d

    def _end(self, result: object) -> object:
        self._ended(self)
        return result

    async def _finish(self) -> PutResult:
        self._upstream = None  # the body is complete: never pause or resume it again
        self._emit(self._encryptor.finalize())
        if self._maker is not None:
            self._send_shares(self._maker.finish())
        streamed = time.monotonic() - self._started
        try:
            record = self._encryptor.record
            assert record is not None  # finalized
            entry = LedgerEntry(
                self.blob,
                self.version,
                False,
                record.to_bytes(),
                self._name,
                record.size,
                self._mtime,
            )
            # The ledger's row is written right after the blob is durable, on the same
            # disk thread. False when an rm of this name came in meanwhile: the later
            # change wins (its newer row stays in the ledger too).
            await self._holdings.publish(
                self.key,
                self.version,
                self._local,
                record.to_bytes(),
                self.key.owner,
                self._ledger.recorder(entry),
            )
        except BaseException:
            self.abort("local write failed")
            raise
        local = time.monotonic() - self._started
        # Peers commit when their stream ends: only once the version is committed
        # here, so that no peer holds a version its owner failed to write (on a
        # local failure the streams were aborted above). Their bytes are all sent
        # already: what waits is each peer's final check and fsync.
        replies = [stream.finish() for _, stream, _ in self._peers]
        outcomes = []
        for (session, _, key), reply in zip(self._peers, replies, strict=True):
            peer = session.info
            try:
                await reply
                outcomes.append(PeerOutcome(peer.org, peer.node_id, True))
                self._placement.holds(peer.node_id, key.blob, self.version)
            except (RemoteError, SessionClosed) as e:
                if isinstance(e, RemoteError) and e.code in ROOM_CODES:
                    self._placement.refused(peer.node_id, key.blob)  # the next peer, then
                # "have": a relayed copy of this very version got there first, the
                # peer says. It counts once the peer proves it, by an audit.
                have = isinstance(e, RemoteError) and e.code == "have"
                if have and await self._auditor.audit(session, key, self.version):
                    outcomes.append(PeerOutcome(peer.org, peer.node_id, True))
                else:
                    error = "said it has it, but could not prove it" if have else str(e)
                    outcomes.append(PeerOutcome(peer.org, peer.node_id, False, error))
        result = PutResult(
            self.blob,
            self._encryptor.size,
            tuple(outcomes),
            time.monotonic() - self._started,
            self._maker is not None,
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
        self._ended(self)
        self._local.abort()
        for _, stream, _ in self._peers:
            stream.abort(reason)
