"""Fakes shared by the unit tests: a TLS-looking transport, a recording handler.

No test module imports another test module; what several of them use lives here.
"""

from __future__ import annotations

from pathlib import Path

from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted import wire
from dfs_twisted.identity import NodeIdentity, ensure_private_dir
from dfs_twisted.protocol import BlobSource, IncomingBlob, RequestRefused
from dfs_twisted.session import PeerSession


class TLSStringTransport(StringTransport):
    """A StringTransport that presents a peer certificate, like a TLS transport."""

    def __init__(self, peer: NodeIdentity | None, peer_address: IPv4Address | None = None) -> None:
        super().__init__(peerAddress=peer_address)
        self.aborted = False
        self._cert = None if peer is None else crypto.X509.from_cryptography(peer.certificate)

    def getPeerCertificate(self) -> crypto.X509 | None:
        return self._cert

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class FakeHandler:
    """Records what the protocol asks of the node's `files.Server`."""

    def __init__(self) -> None:
        self.ready: list[PeerSession] = []
        self.lost: list[str] = []
        self.stores: list[wire.Store] = []
        self.refuse_stores = False

    def session_ready(self, session: PeerSession) -> None:
        self.ready.append(session)

    def session_lost(self, session: PeerSession, reason: str) -> None:
        self.lost.append(reason)

    def open_store(self, session: PeerSession, request: wire.Store) -> IncomingBlob:
        self.stores.append(request)
        raise RequestRefused("forbidden", "not yours")

    def open_fetch(self, session: PeerSession, request: wire.Fetch) -> BlobSource:
        raise RequestRefused("not_found", "no such blob")

    def answer(self, session: PeerSession, request: wire.ControlRequest) -> Deferred[wire.Message]:
        raise RequestRefused("forbidden", "not yours")


def identity(test: SynchronousTestCase) -> NodeIdentity:
    private = Path(test.mktemp())
    ensure_private_dir(private)
    return NodeIdentity.load_or_create(private)


def sent(transport: StringTransport) -> list[wire.Message]:
    return [wire.decode(f) for f in wire.FrameDecoder().feed(transport.value())]
