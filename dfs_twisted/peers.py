"""Configured peers (dialled again with back-off) and the registry of live sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import Logger

from .identity import MutualTLS
from .options import PeerAddress
from .protocol import PeerFactory, PeerProtocol
from .transport import TLSClientEndpoint

log = Logger()


@dataclass
class _Link:
    """What we know of one configured peer address."""

    address: str
    last_error: str | None = None
    refused: bool = False  # the peer answered but failed pinning or admission


class PeerRegistry(MultiService):
    """Dials configured peers and keeps the live sessions, one per node id."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor
        self._links: dict[str, _Link] = {}
        self._sessions: dict[str, list[PeerProtocol]] = {}

    def dial(self, address: PeerAddress, factory: PeerFactory, tls: MutualTLS) -> None:
        """Keep a connection to ``address`` up, retrying with back-off for ever."""
        text = str(address)
        if text in self._links:
            return
        endpoint_type = TCP6ClientEndpoint if ":" in address.host else TCP4ClientEndpoint
        endpoint = TLSClientEndpoint(
            tls, endpoint_type(self._reactor, address.host, address.port, timeout=10)
        )
        service = ClientService(
            endpoint,
            factory.dialling(text),
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=30.0),
            clock=self._reactor,
        )
        service.setServiceParent(self)
        self._links[text] = _Link(text)

    def stopService(self) -> Any:
        # Accepted sessions have no ClientService to end them, and a stopped node
        # must not go on storing and serving for its peers; dialled ones would
        # not close either while registered as their transport's producer.
        for session in [s for group in self._sessions.values() for s in group]:
            session.disconnect()
        return super().stopService()

    def refused(self, address: str, reason: str) -> None:
        link = self._links.get(address)
        if link is not None:
            link.last_error = reason
            link.refused = True

    def add(self, session: PeerProtocol) -> None:
        assert session.info is not None
        self._sessions.setdefault(session.info.node_id, []).append(session)
        link = self._links.get(session.dialled or "")
        if link is not None:
            link.last_error = None
            link.refused = False

    def remove(self, session: PeerProtocol, reason: str) -> None:
        if session.info is None:
            return
        sessions = self._sessions.get(session.info.node_id, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(session.info.node_id, None)
        link = self._links.get(session.dialled or "")
        if link is not None:
            link.last_error = reason
        log.info(
            "peer {org} ({node_id}) disconnected: {reason}",
            org=session.info.org,
            node_id=session.info.node_id,
            reason=reason,
        )

    def live(self) -> list[PeerProtocol]:
        """One session per connected peer node (the oldest, if both sides dialled)."""
        return [sessions[0] for sessions in self._sessions.values() if sessions]

    def sessions(self) -> list[PeerProtocol]:
        """Every authenticated session, a second one to the same peer included."""
        return [s for group in self._sessions.values() for s in group]

    def status(self) -> list[dict[str, Any]]:
        """Every configured address and every accepted peer, with its state."""
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        by_address = {
            s.dialled: s for sessions in self._sessions.values() for s in sessions if s.dialled
        }
        for address, link in self._links.items():
            session = by_address.get(address)
            if session is not None and session.info is not None:
                seen.add(session.info.node_id)
                rows.append(_row(session, address))
            else:
                rows.append(
                    {
                        "address": address,
                        "node_id": None,
                        "org": None,
                        "state": "refused" if link.refused else "connecting",
                        "direction": "outgoing",
                        "last_error": link.last_error,
                    }
                )
        for session in self.live():
            assert session.info is not None
            if session.info.node_id not in seen:
                rows.append(_row(session, session.info.listen))
        return rows


def _row(session: PeerProtocol, address: str) -> dict[str, Any]:
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
    }
