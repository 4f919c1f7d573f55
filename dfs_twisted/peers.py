"""Configured peers (dialled again with back-off) and the registry of live sessions.

A peer that refuses us (admission, a pinned key that changed) answers TLS fine and
then closes: ClientService would count that as a success and dial again within a
second, for ever. Refusals therefore back off on their own, doubling up to
`REFUSED_MAX_DELAY`, until a session with that address is admitted again.

The registry also remembers each peer node it met (org, address, when last seen),
so that status shows one row per peer node: a node seen at a new address replaces
the row of its old one, and a configured peer that is away says since when. The
memory is written to ``private/peers_seen.json`` when the node stops (never while
peers come and go: a connection must not touch the disk).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from .identity import MutualTLS, write_secret
from .options import PeerAddress
from .protocol import PeerFactory, PeerProtocol
from .transport import TLSClientEndpoint

log = Logger()

RETRY_INITIAL_DELAY = 0.2
RETRY_MAX_DELAY = 30.0  # an unreachable peer is dialled at least this often
REFUSED_FIRST_DELAY = 5.0
REFUSED_MAX_DELAY = 600.0  # a peer that refuses us is dialled at least this often
MAX_REMEMBERED = 256  # peer nodes kept in peers_seen.json


@dataclass
class _Link:
    """What we know of one configured peer address."""

    address: str
    last_error: str | None = None
    refused: bool = False  # the peer answered but failed pinning or admission
    refusals: int = 0  # in a row, since the last admitted session


@dataclass
class _Seen:
    """A peer node met at some time: its org, where, and when it was last connected."""

    org: str
    address: str
    last_seen: float


@implementer(IStreamClientEndpoint)
class _PeerEndpoint:
    """A peer's endpoint that names its address and records why a dial failed."""

    def __init__(
        self, inner: IStreamClientEndpoint, address: str, failed: Callable[[str], None]
    ) -> None:
        self._inner = inner
        self._address = address
        self._failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self._failed(failure.getErrorMessage())
            return failure

        d: Deferred[IProtocol] = self._inner.connect(protocolFactory)
        return d.addErrback(failed)

    def __repr__(self) -> str:
        return f"peer {self._address}"


class _RetryLog(Logger):
    """ClientService's logger, saying when a peer is dialled again in plain words."""

    def __init__(self, address: str) -> None:
        super().__init__(namespace=__name__)
        self._address = address

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if "delay" in kwargs and "attempt" in kwargs:
            log.info(
                "peer {address} not connected: dialling again in {delay:.1f} s (attempt {attempt})",
                address=self._address,
                delay=kwargs["delay"],
                attempt=kwargs["attempt"],
            )
            return
        super().emit(level, format, **kwargs)


class _Dialler(ClientService):
    def __init__(self, address: str, *args: Any, **kwargs: Any) -> None:
        self._log = _RetryLog(address)  # read by ClientService.__init__
        super().__init__(*args, **kwargs)


def refusal_delay(refusals: int) -> float:
    """Seconds before dialling a peer that refused us ``refusals`` times in a row."""
    delay = min(REFUSED_MAX_DELAY, REFUSED_FIRST_DELAY * 2.0 ** min(refusals - 1, 20))
    spread: float = random.uniform(0.9, 1.1)  # the retries of many nodes do not align
    return delay * spread


class PeerRegistry(MultiService):
    """Dials configured peers and keeps the live sessions, one per node id."""

    def __init__(
        self,
        reactor: IReactorTime,
        pinned: Callable[[str], str | None] | None = None,
        seen_file: Path | None = None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._pinned = pinned or (lambda address: None)
        self._seen_file = seen_file
        self._links: dict[str, _Link] = {}
        self._sessions: dict[str, list[PeerProtocol]] = {}
        self._seen: dict[str, _Seen] = self._load_seen()

    def _load_seen(self) -> dict[str, _Seen]:
        if self._seen_file is None:
            return {}
        try:
            raw = json.loads(self._seen_file.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        seen = {}
        if isinstance(raw, dict):
            for node_id, row in raw.items():
                try:
                    seen[str(node_id)] = _Seen(
                        str(row["org"]), str(row["address"]), float(row["last_seen"])
                    )
                except (TypeError, KeyError, ValueError):
                    continue
        return seen

    def _save_seen(self) -> None:
        if self._seen_file is None:
            return
        recent = sorted(self._seen.items(), key=lambda item: item[1].last_seen)
        self._seen = dict(recent[-MAX_REMEMBERED:])
        rows = {
            node_id: {"org": s.org, "address": s.address, "last_seen": round(s.last_seen, 3)}
            for node_id, s in self._seen.items()
        }
        try:
            write_secret(self._seen_file, json.dumps(rows, indent=1).encode())
        except OSError as e:
            log.warn("cannot record peers seen in {path}: {error}", path=str(e.filename), error=e)

    def dial(
        self,
        address: PeerAddress,
        factory: PeerFactory,
        tls: MutualTLS | None,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        """Keep a connection to ``address`` up, retrying with back-off for ever.

        ``endpoint`` replaces the TLS connection to ``address`` (for tests).
        """
        text = str(address)
        if text in self._links:
            return
        link = self._links[text] = _Link(text)
        if endpoint is None:
            assert tls is not None
            endpoint_type = TCP6ClientEndpoint if ":" in address.host else TCP4ClientEndpoint
            endpoint = TLSClientEndpoint(
                tls, endpoint_type(self._reactor, address.host, address.port, timeout=10)
            )
        endpoint = _PeerEndpoint(endpoint, text, lambda error: setattr(link, "last_error", error))
        backoff = backoffPolicy(initialDelay=RETRY_INITIAL_DELAY, maxDelay=RETRY_MAX_DELAY)

        def retry_delay(attempt: int) -> float:
            # TLS succeeded on a refused connection, so ClientService starts its
            # count again: the refusals in a row decide instead.
            delay = backoff(attempt)
            return max(delay, refusal_delay(link.refusals)) if link.refusals else delay

        service = _Dialler(
            text,
            endpoint,
            factory.dialling(text),
            retryPolicy=retry_delay,
            clock=self._reactor,
        )
        service.setServiceParent(self)

    def stopService(self) -> Any:
        # Accepted sessions have no ClientService to end them, and a stopped node
        # must not go on storing and serving for its peers; dialled ones would
        # not close either while registered as their transport's producer.
        now = time.time()
        for node_id in self._sessions:
            if node_id in self._seen:
                self._seen[node_id].last_seen = now
        self._save_seen()
        for session in [s for group in self._sessions.values() for s in group]:
            session.disconnect()
        return super().stopService()

    def refused(self, address: str, reason: str) -> None:
        link = self._links.get(address)
        if link is not None:
            link.last_error = reason
            link.refused = True
            link.refusals += 1

    def add(self, session: PeerProtocol) -> None:
        info = session.info
        assert info is not None
        self._sessions.setdefault(info.node_id, []).append(session)
        link = self._links.get(session.dialled or "")
        if link is not None:
            link.last_error = None
            link.refused = False
            link.refusals = 0
        address = session.dialled or info.listen
        self._seen[info.node_id] = _Seen(info.org, address, time.time())

    def remove(self, session: PeerProtocol, reason: str) -> None:
        info = session.info
        if info is None:
            return
        sessions = self._sessions.get(info.node_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(info.node_id, None)
            seen = self._seen.get(info.node_id)
            if seen is not None:
                seen.last_seen = time.time()
        link = self._links.get(session.dialled or "")
        if link is not None:
            link.last_error = reason
        log.info(
            "peer {org} ({node_id}) disconnected: {reason}",
            org=info.org,
            node_id=info.node_id,
            reason=reason,
        )

    def live(self) -> list[PeerProtocol]:
        """One session per connected peer node (the oldest, if both sides dialled)."""
        return [sessions[0] for sessions in self._sessions.values() if sessions]

    def known(self) -> dict[str, float | None]:
        """Every peer node met, by node id: when it was last seen (None: connected now)."""
        known: dict[str, float | None] = {n: s.last_seen for n, s in self._seen.items()}
        known.update((node_id, None) for node_id, group in self._sessions.items() if group)
        return known

    def sessions(self) -> list[PeerProtocol]:
        """Every authenticated session, a second one to the same peer included."""
        return [s for group in self._sessions.values() for s in group]

    def status(self) -> list[dict[str, Any]]:
        """One row per peer node: configured addresses and connected peers.

        ``node_id`` is the id a live session authenticated (None for an address
        not connected now); ``last_seen`` is when the node last pinned to a
        configured address was connected (now, for a connected peer).
        """
        now = time.time()
        live = {s.info.node_id: s for s in self.live() if s.info is not None}
        by_address = {s.dialled: s for s in self.sessions() if s.dialled}
        rows: list[dict[str, Any]] = []
        shown: set[str] = set()
        for address, link in self._links.items():
            session = by_address.get(address)
            if session is not None and session.info is not None:
                if session.info.node_id not in shown:
                    shown.add(session.info.node_id)
                    rows.append(_row(session, address, now))
                continue
            node_id = self._pinned(address)
            if node_id is not None and (node_id in live or node_id in shown):
                # That node is connected at another address (it moved): its live
                # row stands for it, not a dead one at the old address.
                continue
            seen = self._seen.get(node_id) if node_id is not None else None
            if node_id is not None:
                shown.add(node_id)
            rows.append(
                {
                    "address": address,
                    "node_id": None,
                    "org": seen.org if seen else None,
                    "state": "refused" if link.refused else "connecting",
                    "direction": "outgoing",
                    "last_error": link.last_error,
                    "last_seen": seen.last_seen if seen else None,
                }
            )
        for node_id, session in live.items():
            if node_id not in shown:
                shown.add(node_id)
                assert session.info is not None
                rows.append(_row(session, session.info.listen, now))
        return rows


def _row(session: PeerProtocol, address: str, now: float) -> dict[str, Any]:
    assert session.info is not None
    return {
        "address": address,
        "node_id": session.info.node_id,
        "org": session.info.org,
        "state": "connected",
        "direction": "outgoing" if session.dialled else "incoming",
        "rtt_ms": None if session.rtt is None else round(session.rtt * 1000, 2),
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        "last_error": None,
        "last_seen": round(now, 3),
    }
