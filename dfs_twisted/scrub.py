"""Background scrub: re-read every blob this node holds and check the owner's signature.

A holder cannot decrypt other orgs' replicas, but it can check that each is complete
and exactly as its owner signed it (crypto.SealCheck). A blob that fails is dropped
and fetched again from a peer that holds a good copy. The pass is rate-limited so
that it never competes with real traffic, runs every `period` seconds, and its last
result is kept in ``DIR/scrub.json`` so that status survives a restart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import task, threads
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python.failure import Failure

from .catalog import Catalog
from .crypto import CryptoError, SealCheck
from .files import Files
from .identity import write_secret
from .store import BlobKey

log = Logger()

READ_SIZE = 1 << 20
MAX_PROBLEMS = 100  # kept in the report, newest last


def verify_blob(path: Path, key: BlobKey) -> int:
    """Read a blob and check its signature (in a worker thread); return its size.

    Raises CryptoError for a damaged blob, FileNotFoundError for one deleted meanwhile.
    """
    check = SealCheck(owner=key.owner, blob=key.blob)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_SIZE):
            check.feed(block)
    check.finish()
    return check.length


@dataclass
class ScrubReport:
    started: float | None = None
    finished: float | None = None
    checked: int = 0
    bytes: int = 0
    damaged: int = 0
    repaired: int = 0
    # Blob ids (never file names) that failed, with what became of them.
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _live(catalog: Catalog) -> Iterator[BlobKey]:
    """Every live blob held, leaf by leaf of each owner's tree (merkle.py): a pass
    never holds a list of every blob in memory (a million ids are 120 MB)."""
    for owner in catalog.owners():
        for leaf in catalog.leaves(owner):
            for blob, entry in catalog.entries(owner, leaf):
                if not entry.deleted:
                    yield BlobKey(owner, blob)


class Scrubber(Service):
    def __init__(
        self,
        files: Files,
        state: Path,
        period: float,
        rate: int,
        reactor: PosixReactorBase,  # its clock and its thread pool
    ) -> None:
        self.files = files
        self.state = state
        self.period = period  # seconds between passes; 0: never
        self.rate = rate  # bytes per second
        self.reactor = reactor
        self.last = self._load()
        self.current: ScrubReport | None = None
        self._loop: task.LoopingCall | None = None
        self._pass: Deferred[Any] | None = None

    def _load(self) -> ScrubReport | None:
        try:
            raw = json.loads(self.state.read_text("utf-8"))
            return ScrubReport(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def startService(self) -> None:
        super().startService()
        if self.period <= 0:
            return
        self._loop = task.LoopingCall(self._due)
        self._loop.clock = self.reactor
        # Checked often; a pass starts once `period` passed since the last one ended.
        self._loop.start(min(self.period, 60.0), now=True)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._pass is not None:
            self._pass.cancel()
        return None

    def _due(self) -> None:
        if self._pass is not None:
            return
        last = self.last.finished if self.last and self.last.finished else None
        if last is not None and time.time() - last < self.period:
            return
        self.start_now()

    def start_now(self) -> bool:
        """Start a pass now unless one is running (True: this call started it)."""
        if self._pass is not None:
            return False
        self._pass = Deferred.fromCoroutine(self.run())
        self._pass.addErrback(self._failed).addBoth(self._done)
        return True

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.failure("scrub failed", failure)

    def _done(self, _: object) -> None:
        self._pass = None

    async def run(self) -> ScrubReport:
        """One pass over every live blob held here."""
        report = self.current = ScrubReport(started=time.time())
        started = time.monotonic()
        catalog = self.files.catalog
        for key in _live(catalog):
            entry = catalog.get(key)
            if entry is None or entry.deleted:
                continue  # deleted while the pass went on
            report.checked += 1
            try:
                report.bytes += await threads.deferToThreadPool(
                    self.reactor,
                    self.reactor.getThreadPool(),
                    verify_blob,
                    self.files.store.path_for(key),
                    key,
                )
            except FileNotFoundError:
                if catalog.get(key) == entry:
                    await self._damaged(report, key, entry.version, "missing")
                continue
            except (CryptoError, OSError) as e:
                if catalog.get(key) == entry:  # not replaced while being read
                    await self._damaged(report, key, entry.version, str(e))
                continue
            # Rate limit: never ahead of `rate` bytes per second on average.
            ahead = report.bytes / self.rate - (time.monotonic() - started)
            if ahead > 0:
                await task.deferLater(self.reactor, ahead)
        report.finished = time.time()
        self.last, self.current = report, None
        write_secret(self.state, json.dumps(report.as_json()).encode())
        os.chmod(self.state, 0o644)
        log.info(
            "scrub checked {checked} blobs ({bytes} bytes): {damaged} damaged, {repaired} repaired",
            checked=report.checked,
            bytes=report.bytes,
            damaged=report.damaged,
            repaired=report.repaired,
        )
        return report

    async def _damaged(self, report: ScrubReport, key: BlobKey, version: int, why: str) -> None:
        report.damaged += 1
        del report.problems[: -MAX_PROBLEMS + 1]
        self.files.damaged(key, why)
        source = await self.files.repair(key, version)
        if source is None:
            report.problems.append(f"{key.blob}: {why}; no peer had a good copy")
            log.warn("scrub: no peer had a good copy of {blob}", blob=key.blob)
            return
        report.repaired += 1
        report.problems.append(f"{key.blob}: {why}; replaced from {source}")
        log.info("scrub replaced {blob} from {org}", blob=key.blob, org=source)

    def status(self) -> dict[str, Any]:
        return {
            "period_seconds": self.period,
            "rate_bytes": self.rate,
            "running": self.current is not None,
            "last": self.last.as_json() if self.last else None,
        }
