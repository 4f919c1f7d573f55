"""Storage audits: holders prove they still hold this org's blobs.

A peer's "I have it" is a claim. The owner asks a holder for one chunk of a blob
version, chosen at random, hashed with a fresh random nonce (crypto.audit_digest),
and computes the same from its own copy: only a node that has the chunk's bytes
can answer. A holder is counted as holding a version only while it is not known to
have failed an audit of it; one that fails, or does not answer, is shown as not
holding it and is sent the blob again. Every `--audit-period` a few blobs
(`--audit-sample`) per peer are audited: the cost is bounded whatever the store.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.logger import Logger

from .. import wire
from ..crypto import CryptoError, audit_digest, check_chunk, chunk_at, last_chunk
from ..session import PeerClient, PeerSession, RemoteError, SessionClosed
from ..store import BlobKey
from .holdings import Holdings, read_header
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
        node_id: str,
        holdings: Holdings,
        peers: Callable[[], Sequence[PeerSession]],
        resend: Callable[[PeerSession, BlobKey], object],
        placement: Placement,
        sample: int = 8,
    ) -> None:
        self._node_id = node_id
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
        peer = session.info.node_id
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
        self.results[(peer, key.blob)] = AuditResult(version, passed, time.time(), error)
        if passed:
            self.passed += 1
            self._placement.holds(peer, key.blob, version)
        else:
            self.failed += 1
            self._placement.lost(peer, key.blob)
            log.warn(
                "peer {org} failed the audit of {blob}: {error}; sending it again",
                org=session.info.org,
                blob=key.blob,
                error=error,
            )
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
        if passed or failed:
            log.info("audits: {passed} passed, {failed} failed", passed=passed, failed=failed)
        return passed, failed
