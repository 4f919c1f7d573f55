"""Storage audits: holders prove they still hold this org's blobs.

A peer's "I have it" is a claim. The owner asks a holder for one chunk of a blob
version, chosen at random, hashed with a fresh random nonce (crypto.audit_digest),
and computes the same from its own copy: only a node that has the chunk's bytes
can answer. A share (--erasure) has no copy here to compare with: its holder sends
the chunk itself, which must carry this org's signature, and says how long its
share is, which must be what the file's blob here gives.

A holder is counted as holding a version only while it is not known to have failed
an audit of it; one that fails, or does not answer, is shown as not holding it and
is sent the blob again (a share: it goes to the next peer instead). Every
`--audit-period` a few blobs (`--audit-sample`) per peer are audited: the cost is
bounded whatever the store.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import wire
from ..crypto import (
    CryptoError,
    IntegrityError,
    audit_digest,
    check_chunk,
    chunk_at,
    ciphertext_size,
    last_chunk,
    open_metadata,
    parse_header,
    share_id,
)
from ..erasure import Erasure
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .holdings import Holdings, read_header
from .owner import Owner
from .placement import Placement

log = Logger()


@dataclass(frozen=True)
class AuditResult:
    version: int
    passed: bool
    when: float
    error: str | None = None


class Auditor:
    def __init__(
        self,
        owner: Owner,
        holdings: Holdings,
        peers: Callable[[], Sequence[PeerSession]],
        resend: Callable[[PeerSession, BlobKey], object],
        placement: Placement,
        sample: int = 8,
    ) -> None:
        self._owner = owner
        self._node_id = owner.node_id
        self._holdings = holdings
        self._peers = peers
        self._resend = resend
        self._placement = placement
        self.sample = sample
        self.results: dict[tuple[str, str], AuditResult] = {}  # (peer, blob) -> the last
        self.passed = 0
        self.failed = 0

    def failed_holder(self, peer: str, blob: str, version: int) -> bool:
        """Whether ``peer`` failed its last audit of this version of ``blob``."""
        result = self.results.get((peer, blob))
        return result is not None and result.version == version and not result.passed

    async def audit(self, session: PeerSession, key: BlobKey, version: int) -> bool:
        """Ask ``session`` to prove it holds ``version`` of one of this org's blobs.

        False when it cannot (or this node has no good copy to check it against:
        then nothing is recorded against the peer).
        """
        expected = self._challenge(key, version)
        if expected is None:
            return False
        index, nonce, digest = expected
        error = None
        try:
            reply = await session.request(
                wire.Audit(key.owner, key.blob, version, index, nonce.hex())
            )
            passed = isinstance(reply, wire.AuditReply) and reply.digest == digest.hex()
            if not passed:
                error = "wrong answer"
        except (RemoteError, SessionClosed) as e:
            passed, error = False, str(e)
        return self._record(session, key, version, passed, error)

    def _record(
        self, session: PeerSession, key: BlobKey, version: int, passed: bool, error: str | None
    ) -> bool:
        peer = session.info.node_id
        self.results[(peer, key.blob)] = AuditResult(version, passed, time.time(), error)
        if passed:
            self.passed += 1
            self._placement.holds(peer, key.blob, version)
        else:
            self.failed += 1
            self._placement.failed(peer, key.blob, version)
            log.warn(
                "peer {org} failed the audit of {blob}: {error}; sending it again",
                org=session.info.org,
                blob=key.blob,
                error=error,
            )
        return passed

    async def audit_share(self, session: PeerSession, blob: str, index: int, version: int) -> bool:
        """Ask ``session`` to prove it holds share ``index`` of ``version`` of one of
        this org's files: one chunk of it, chosen at random, signed by this org, in a
        share of the length the file's blob here gives. One that fails is passed
        over for that share, which goes to the next peer (placement.py)."""
        key = BlobKey(self._node_id, share_id(blob, index))
        length = self._holdings.store.size(BlobKey(self._node_id, blob))
        if length is None:
            return False  # nothing here to check it against: nothing recorded
        try:
            reply = await PeerClient(session).head(key)
            header = parse_header(bytes.fromhex(reply.header))
            share = open_metadata(self._owner.key, header).share  # binds it to its index
            if header.owner != self._node_id or header.version != version or share is None:
                raise IntegrityError("not this org's share of that version")
            erasure = Erasure(share.k, share.n)
            size = erasure.share_size(length)
            if reply.size != ciphertext_size(len(header.raw), header.chunk_size, size):
                raise IntegrityError(f"a share of {reply.size} bytes: not that file's")
            chunk_index = random.randrange(last_chunk(header, reply.size)[1] + 1)
            offset, chunk_size, _ = chunk_at(header, reply.size, chunk_index)
            chunk = await _read(session, key, version, offset, chunk_size)
            check_chunk(header, reply.size, chunk_index, chunk)
            passed, error = True, None
        except (RemoteError, SessionClosed, CryptoError, ValueError) as e:
            passed, error = False, str(e)
        if not self._record(session, key, version, passed, error):
            self._placement.refused(session.info.node_id, key.blob)
        return passed

    def _challenge(self, key: BlobKey, version: int) -> tuple[int, bytes, bytes] | None:
        """A random chunk of this node's copy, checked good: (index, nonce, answer)."""
        f = self._holdings.store.open(key)
        if f is None:
            return None
        try:
            with f:
                header = read_header(f)
                if header.version != version:
                    return None
                length = os.fstat(f.fileno()).st_size
                _, last = last_chunk(header, length)
                index = random.randrange(last + 1)
                offset, size, _ = chunk_at(header, length, index)
                f.seek(offset)
                chunk = f.read(size)
                # A damaged copy here must not be blamed on the holder.
                check_chunk(header, length, index, chunk)
        except CryptoError:
            return None
        nonce = os.urandom(32)
        return index, nonce, audit_digest(nonce, chunk)

    async def run(self) -> tuple[int, int]:
        """One round: a sample of this org's blobs each live peer claims to hold."""
        passed = failed = 0
        for session in self._peers():
            try:
                claims = await PeerClient(session).list_all(self._node_id)
            except (RemoteError, SessionClosed):
                continue
            held = [
                (blob, claim.version)
                for blob, claim in claims.items()
                if not claim.deleted
                and (entry := self._holdings.catalog.get(BlobKey(self._node_id, blob))) is not None
                and entry.version == claim.version
            ]
            for blob, version in random.sample(held, min(self.sample, len(held))):
                key = BlobKey(self._node_id, blob)
                if await self.audit(session, key, version):
                    passed += 1
                else:
                    failed += 1
                    self._resend(session, key)
            for blob, index, version in self._shares_claimed(claims):
                if await self.audit_share(session, blob, index, version):
                    passed += 1
                else:
                    failed += 1
        if passed or failed:
            log.info("audits: {passed} passed, {failed} failed", passed=passed, failed=failed)
        return passed, failed

    def _shares_claimed(self, claims: dict[str, wire.ListEntry]) -> list[tuple[str, int, int]]:
        """With erasure coding, up to ``sample`` shares of this org's current files a
        peer's listing claims: (file blob, share index, version). Found from a random
        sample of the files, not by working out every share id of every file."""
        erasure = self._placement.erasure
        if erasure is None:
            return []
        files = [(b, e) for b, e in self._holdings.catalog.entries(self._node_id) if not e.deleted]
        found = []
        for blob, entry in random.sample(files, min(len(files), 4 * self.sample)):
            for index in range(erasure.n):
                claim = claims.get(share_id(blob, index))
                if claim is not None and not claim.deleted and claim.version == entry.version:
                    found.append((blob, index, entry.version))
        return found[: self.sample]


class _Range:
    """The first ``size`` bytes a FETCH sends; `done` fires with them (or with what
    came, if the fetch ends first)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def started(self, size: int) -> None:
        pass

    def data(self, payload: bytes | memoryview) -> None:
        if not self.done.called:
            self._data += payload[: self._size - len(self._data)]
            if len(self._data) == self._size:
                self.done.callback(bytes(self._data))

    def ended(self, result: object) -> None:
        if not self.done.called:
            if isinstance(result, Failure):
                self.done.errback(result)
            else:
                self.done.callback(bytes(self._data))


async def _read(session: PeerSession, key: BlobKey, version: int, offset: int, size: int) -> bytes:
    """``size`` bytes of a blob a peer holds, from ``offset``; the rest is not sent."""
    sink = _Range(size)
    reply = session.fetch(wire.Fetch(key.owner, key.blob, version, offset), sink)
    reply.addBoth(sink.ended)
    data = await sink.done
    reply.cancel()  # its end (or CancelledError) is consumed by sink.ended
    return data
