"""Fakes shared by the unit tests: a TLS-looking transport, a recording handler.

No test module imports another test module; what several of them use lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
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

    def open_fetch(self, session: PeerSession, request: wire.Fetch) -> Deferred[BlobSource]:
        raise RequestRefused("not_found", "no such blob")

    def answer(self, session: PeerSession, request: wire.ControlRequest) -> Deferred[wire.Message]:
        raise RequestRefused("forbidden", "not yours")


def identity(test: SynchronousTestCase) -> NodeIdentity:
    private = Path(test.mktemp())
    ensure_private_dir(private)
    return NodeIdentity.load_or_create(private)


def sent(transport: StringTransport) -> list[wire.Message]:
    return [wire.decode(f) for f in wire.FrameDecoder().feed(transport.value())]


# -- the multiplexer's side of a session, with no transport (test_mux, test_mux_limits)

A = "a" * 64
B = "b" * 64


class Wire:
    """mux.Output: every frame sent, decoded again."""

    def __init__(self) -> None:
        self.sent: list[tuple[wire.Frame, wire.Message]] = []

    def frame(self, data: bytes) -> None:
        for f in wire.FrameDecoder().feed(data):
            self.sent.append((f, wire.decode(f)))

    def data(self, header: bytes, payload: bytes | memoryview) -> None:
        self.frame(header + bytes(payload))

    def messages(self) -> list[wire.Message]:
        return [m for _, m in self.sent]


class Blob:
    """An IncomingBlob that keeps what it is sent."""

    def __init__(self, refuse_after: int | None = None) -> None:
        self.data = b""
        self.aborted: str | None = None
        self.finished = False
        self._refuse_after = refuse_after

    def write(self, data: bytes | memoryview) -> None:
        if self._refuse_after is not None and len(self.data) + len(data) > self._refuse_after:
            raise RequestRefused("quota", "full")
        self.data += data

    def finish(self) -> Deferred[None]:
        self.finished = True
        return succeed(None)

    def abort(self, reason: str) -> None:
        self.aborted = reason


class Source:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)
        self.position = 0
        self.closed = False
        self.failing: Exception | None = None  # what every read raises from now on

    def read(self, n: int) -> Deferred[bytes]:
        if self.failing is not None:
            return fail(self.failing)
        piece, self._data = self._data[:n], self._data[n:]
        self.position += len(piece)
        return succeed(piece)

    def close(self) -> None:
        self.closed = True


class Handler:
    def __init__(self) -> None:
        self.blobs: list[Blob] = []
        self.refuse_after: int | None = None
        self.source = Source(b"")

    def session_ready(self, session: Any) -> None: ...
    def session_lost(self, session: Any, reason: str) -> None: ...

    def open_store(self, session: Any, request: wire.Store) -> Blob:
        blob = Blob(self.refuse_after)
        self.blobs.append(blob)
        return blob

    def open_fetch(self, session: Any, request: wire.Fetch) -> Deferred[Any]:
        return succeed(self.source)

    def answer(self, session: Any, request: wire.ControlRequest) -> Deferred[wire.Message]:
        if isinstance(request, wire.Digest):
            return succeed(wire.DigestReply(A, 3))
        raise RequestRefused("not_found", "nothing here")


class Sink:
    def __init__(self) -> None:
        self.size: int | None = None
        self.received = b""

    def started(self, size: int) -> None:
        self.size = size

    def data(self, payload: bytes | memoryview) -> None:
        self.received += payload
