"""The peer protocol: TLS handshake, HELLO, framed requests and streams.

`PeerProtocol` only moves bytes between the frame parser (`wire`) and a
`SessionHandler` (the file server), which decides what a request means. Requests
are multiplexed by id; a frame with FLAG_REPLY belongs to a request this side made.

Flow control: the protocol registers itself as the streaming producer of its
transport, so a peer that reads slowly pauses it; senders of bulk data wait on
`when_writable()` before writing more.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import task
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .admission import EXPORTER_LABEL, EXPORTER_LENGTH, Admission
from .identity import NodeIdentity, PeerPins, PinMismatch, node_id_of
from .session import FetchSink, PeerInfo, PeerSession, RemoteError, SessionClosed

__all__ = [
    "Limits",
    "PeerFactory",
    "PeerInfo",
    "PeerProtocol",
    "RemoteError",
    "RequestRefused",
    "SessionClosed",
]

log = Logger()


@dataclass(frozen=True)
class Limits:
    """What one connection may cost this node."""

    handshake_timeout: float = 30.0  # TLS and HELLO must be done by then
    stall_timeout: float = 120.0  # a frame or transfer that receives nothing this long
    # A PING unanswered, and nothing else received, for this long: the peer is
    # unreachable (a cut link sends no FIN; TCP alone would notice in ~15 minutes).
    ping_timeout: float = 30.0
    max_streams: int = 16  # concurrent STOREs received, and FETCHes served, per connection
    # Connections still in TLS or HELLO at once, in all and from one address: past
    # either bound the oldest waiting one is dropped, so idle sockets cannot lock
    # out a peer that completes its handshake promptly.
    max_unauthenticated: int = 64
    max_unauthenticated_per_host: int = 16
    # Authenticated sessions at once: node ids cost nothing to make, and every session
    # costs memory. One accepted session per node id: a newer one replaces it.
    max_sessions: int = 128


# DATA frames are cut at this size: large enough to keep Python overhead low,
# small enough that a frame is a fraction of the transport's buffer.
DATA_FRAME = 256 * 1024
PING_INTERVAL = 10.0  # seconds between round-trip measurements of a session


class IncomingBlob(TypingProtocol):
    """Where the bytes of a peer's STORE go."""

    def write(self, data: bytes) -> None: ...
    def finish(self) -> Deferred[None]: ...
    def abort(self, reason: str) -> None: ...


class BlobSource(TypingProtocol):
    """What a FETCH reads from."""

    size: int

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class RequestRefused(Exception):
    """Raised by a handler to answer a request with an Error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SessionRegistry(TypingProtocol):
    """Where ready sessions are kept (peers.PeerRegistry)."""

    def sessions(self) -> list[PeerProtocol]: ...
    def add(self, session: PeerProtocol) -> None: ...
    def remove(self, session: PeerProtocol, reason: str) -> None: ...


class SessionHandler(TypingProtocol):
    """What a node does with its peers' sessions and requests (the file logic)."""

    def session_ready(self, session: PeerSession) -> None: ...
    def session_lost(self, session: PeerSession, reason: str) -> None: ...
    def open_store(self, session: PeerSession, request: wire.Store) -> IncomingBlob: ...
    def open_fetch(self, session: PeerSession, request: wire.Fetch) -> BlobSource: ...
    def answer(
        self, session: PeerSession, request: wire.ControlRequest
    ) -> Deferred[wire.Message]: ...


class _Discard:
    """An incoming stream we refused: its in-flight DATA frames are dropped."""


@dataclass
class _Pending:
    reply: Deferred[wire.Message]
    sink: FetchSink | None = None
    streaming: bool = False


class OutgoingStream:
    """A STORE being sent: write ciphertext, then finish() to await the ack."""

    def __init__(self, session: PeerProtocol, request_id: int, reply: Deferred[wire.Message]):
        self._session = session
        self._id = request_id
        self.reply = reply
        self.sent = 0
        self.closed = False
        reply.addBoth(self._on_reply)

    def _on_reply(self, result: object) -> object:
        # An early reply (a refusal) ends the stream: stop sending, and end it
        # on the receiver's side too, which otherwise waits for the END.
        if not self.closed:
            self.closed = True
            self._session.send(wire.Abort("refused"), self._id)
        return result

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        view = memoryview(data)
        for start in range(0, len(view), DATA_FRAME):
            piece = view[start : start + DATA_FRAME]
            self._session.send_data(self._id, piece, end=False, reply=False)
        self.sent += len(data)

    def finish(self) -> Deferred[wire.Message]:
        if not self.closed:
            self.closed = True
            self._session.send_data(self._id, b"", end=True, reply=False)
        return self.reply

    def abort(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._session.send(wire.Abort(reason[:512]), self._id)
            # Nobody awaits the answer of an aborted stream (if one ever comes).
            self.reply.addErrback(lambda _: None)


@implementer(IHandshakeListener, IPushProducer)
class PeerProtocol(Protocol):
    """One TLS connection to another node."""

    factory: PeerFactory

    def __init__(self, dialled: str | None = None) -> None:
        # The address we dialled (for pinning), None for an accepted connection.
        self.dialled = dialled
        self.peer: PeerInfo | None = None  # set once the handshake is done
        self.ready: Deferred[PeerProtocol] = Deferred()
        self.paused = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._decoder = wire.FrameDecoder()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._incoming: dict[int, IncomingBlob | _Discard] = {}
        self._serving: dict[int, BlobSource] = {}
        self._writable: list[Deferred[None]] = []
        self._read_holds: set[object] = set()
        self._counted = False
        self._pinger: task.LoopingCall | None = None
        self.rtt: float | None = None  # seconds, from the last answered PING
        self._ping_outstanding = False
        self._stall: Any = None
        self._last_received = 0.0
        self._peer_id: str | None = None
        self._closing = False
        self._timeout: object = None

    @property
    def info(self) -> PeerInfo:
        """Who the peer is: only asked of a session whose handshake is done."""
        if self.peer is None:
            raise SessionClosed("the session's handshake is not done")
        return self.peer

    @property
    def closed(self) -> bool:
        return self._closing or self.transport is None

    # -- connection life cycle

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        factory = self.factory
        factory.waiting(self)
        self._counted = True
        tcp = getattr(self.transport, "transport", None)
        if tcp is not None:
            # Bigger reads and send buffer for bulk sessions (measured: about 2x).
            tcp.bufferSize = 4 << 20
            tcp.SEND_LIMIT = 1 << 20
        self._timeout = factory.clock.callLater(
            factory.limits.handshake_timeout, self.close, "handshake timed out"
        )

    def _authenticated(self) -> None:
        """No longer counted as a connection awaiting its handshake."""
        if self._counted:
            self._counted = False
            self.factory.admitted(self)

    def handshakeCompleted(self) -> None:
        peer_cert = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        if peer_cert is None:
            self.close("no client certificate")
            return
        self._peer_id = node_id_of(peer_cert.to_cryptography())
        if self._peer_id == self.factory.identity.node_id:
            self.close("connected to itself")
            return
        refusal = self.factory.admission.refuse_certificate(self._peer_id)
        if refusal is not None:
            self._refuse(f"admission refused: {refusal}")
            return
        if self.dialled is not None:
            try:
                self.factory.pins.check(self.dialled, self._peer_id)
            except PinMismatch as e:
                self._refuse(str(e))
                return
            # The dialler speaks first; the acceptor answers only once admitted,
            # so a stranger learns nothing about this node.
            self.send(self.factory.hello(self._binding()), 0)

    def _binding(self) -> bytes | None:
        """Keying material exported from this TLS session, to bind admission proofs."""
        export = getattr(self.transport, "export_keying_material", None)
        return None if export is None else bytes(export(EXPORTER_LABEL, EXPORTER_LENGTH))

    def _refuse(self, reason: str) -> None:
        if self.dialled is not None:
            self.factory.refused(self.dialled, reason)
        self.close(reason, tell_peer=True)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self._closing and self.peer is None:
            # Failed TLS handshakes (garbage, plain TCP, no certificate) end here.
            log.warn(
                "connection from {address} ended before its handshake completed: {reason}",
                address=self._address(),
                reason=reason.getErrorMessage() if reason is not None else "closed",
            )
        self._closing = True
        self._cancel_timeout()
        self._authenticated()
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        why = reason.getErrorMessage() if reason is not None else "closed"
        # Taken first: an errback may make a new request (which then fails at once).
        pending, self._pending = self._pending, {}
        for request in pending.values():
            if not request.reply.called:
                request.reply.errback(SessionClosed(f"connection lost: {why}"))
        incoming, self._incoming = self._incoming, {}
        for sink in incoming.values():
            if not isinstance(sink, _Discard):
                sink.abort("connection lost")
        serving, self._serving = self._serving, {}
        for source in serving.values():
            source.close()
        writable, self._writable = self._writable, []
        for waiter in writable:
            waiter.errback(SessionClosed("connection lost"))
        if self.peer is not None:
            if self.factory.registry is not None:
                self.factory.registry.remove(self, why)
            self.factory.handler.session_lost(self, why)
        elif not self.ready.called:
            self.ready.errback(SessionClosed(why))
            # Usually nobody waits on `ready` (close() already logged why): without
            # this, every connection refused before HELLO also logs "Unhandled error
            # in Deferred" when it is garbage-collected.
            self.ready.addErrback(lambda _: None)

    def close(self, reason: str, *, tell_peer: bool = False) -> None:
        """Close this connection, logging why (hostile or broken input, refusals, timeouts).

        With ``tell_peer`` the reason is sent first and the connection closed
        cleanly; otherwise it is cut at once.
        """
        if self._closing:
            return
        who = self.peer.org if self.peer else (self._peer_id or "unauthenticated")
        log.warn(
            "closing peer connection {peer} at {address}: {reason}",
            peer=who,
            address=self._address(),
            reason=reason,
        )
        if tell_peer:
            self.send(wire.Error("refused", reason[:512]), 0, reply=True)
            self._closing = True
            self.disconnect()
        else:
            self._closing = True
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]

    def disconnect(self) -> None:
        """Flush and close; in-flight requests fail with SessionClosed."""
        transport: Any = self.transport
        if transport is not None:
            # A TLS transport closes only once its producer (this) is unregistered.
            transport.unregisterProducer()
            transport.loseConnection()

    def _cancel_timeout(self) -> None:
        timeout, self._timeout = self._timeout, None
        if timeout is not None and timeout.active():  # type: ignore[attr-defined]
            timeout.cancel()  # type: ignore[attr-defined]

    def remote_host(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        return str(getattr(peer, "host", "?"))

    def _address(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        host = getattr(peer, "host", "?")
        port = getattr(peer, "port", "?")
        return f"{host}:{port}"

    # -- producer interface, driven by the transport

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self._writable = self._writable, []
        for waiter in waiters:
            if self.paused:
                self._writable.append(waiter)
            else:
                waiter.callback(None)

    def stopProducing(self) -> None:
        self.paused = True

    def hold_reading(self, holder: object) -> None:
        """Stop reading from this peer until every holder released it (back-pressure)."""
        if not self._read_holds and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._read_holds.add(holder)

    def release_reading(self, holder: object) -> None:
        if holder not in self._read_holds:
            return
        self._read_holds.discard(holder)
        if not self._read_holds and self.transport is not None and not self._closing:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def when_writable(self) -> Deferred[None]:
        """Fires once the transport wants more data."""
        if self._closing:
            return fail(SessionClosed("connection closed"))
        if not self.paused:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._writable.append(d)
        return d

    # -- sending

    def send(self, message: wire.Message, request_id: int, *, reply: bool = False) -> None:
        if self._closing:
            return
        frame = wire.encode(message, request_id, reply=reply)
        self.bytes_out += len(frame)
        self.transport.write(frame)  # type: ignore[union-attr]

    def send_data(
        self, request_id: int, payload: bytes | memoryview, *, end: bool, reply: bool
    ) -> None:
        if self._closing:
            return
        header = wire.data_header(request_id, len(payload), end=end, reply=reply)
        self.bytes_out += len(header) + len(payload)
        # BulkTLSProtocol takes a memoryview payload without copying it.
        self.transport.writeSequence([header, payload])  # type: ignore[union-attr, list-item]

    def _new_request(self, sink: FetchSink | None = None) -> tuple[int, _Pending]:
        request_id = next(self._ids)
        pending = _Pending(Deferred(canceller=lambda d: self._cancel_request(request_id)), sink)
        if self._closing:
            # Never sent: it would wait for ever for an answer.
            pending.reply.errback(SessionClosed("connection closed"))
            return request_id, pending
        self._pending[request_id] = pending
        return request_id, pending

    def _cancel_request(self, request_id: int) -> None:
        pending = self._pending.get(request_id)
        if pending is not None and pending.sink is not None:
            # Keep the entry as a discard target until the peer ends the stream.
            pending.sink = None
            self.send(wire.Abort("cancelled"), request_id)
        else:
            self._pending.pop(request_id, None)

    def request(self, message: wire.ControlRequest | wire.Ping) -> Deferred[wire.Message]:
        """Send a control request; the Deferred fires with the reply message."""
        request_id, pending = self._new_request()
        self.send(message, request_id)
        return pending.reply

    def store(self, message: wire.Store) -> OutgoingStream:
        request_id, pending = self._new_request()
        self.send(message, request_id)
        return OutgoingStream(self, request_id, pending.reply)

    def fetch(self, message: wire.Fetch, sink: FetchSink) -> Deferred[wire.Message]:
        """Ask for a blob; ``sink`` gets its size then its bytes. Fires at the end."""
        request_id, pending = self._new_request(sink)
        self.send(message, request_id)
        return pending.reply

    # -- receiving

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._last_received = self.factory.clock.seconds()
        try:
            frames = self._decoder.feed(data)
            for frame in frames:
                if self._closing:
                    return
                self._dispatch(frame, wire.decode(frame))
        except wire.ProtocolError as e:
            self.close(f"protocol error: {e}")
            return
        self._watch()

    # -- stalls: a peer that starts a frame or a transfer and then goes quiet

    def _busy(self) -> bool:
        return (
            self._decoder.buffered > 0
            or bool(self._incoming)
            or any(p.streaming for p in self._pending.values())
        )

    def _watch(self) -> None:
        if self._stall is None and self.peer is not None and self._busy():
            self._stall = self.factory.clock.callLater(
                self.factory.limits.stall_timeout, self._check_stall
            )

    def _check_stall(self) -> None:
        self._stall = None
        if self._closing or not self._busy():
            return
        limit = self.factory.limits.stall_timeout
        quiet = self.factory.clock.seconds() - self._last_received
        if self._read_holds:
            quiet = 0.0  # we stopped reading (slow disk or client): not the peer's fault
            self._last_received = self.factory.clock.seconds()
        if quiet >= limit:
            self.close(f"stalled: nothing received for {quiet:.0f}s in the middle of a transfer")
        else:
            self._stall = self.factory.clock.callLater(limit - quiet, self._check_stall)

    def _dispatch(self, frame: wire.Frame, message: wire.Message) -> None:
        if isinstance(message, wire.Error) and frame.request_id == 0:
            # The peer refuses this connection (admission, pinning) and says why.
            reason = f"peer refused us: {message.message}"
            if self.dialled is not None:
                self.factory.refused(self.dialled, reason)
            self.close(reason)
            return
        if self.peer is None:
            self._expect_hello(message)
            return
        if isinstance(message, wire.Hello):
            raise wire.ProtocolError("second HELLO")
        if frame.flags & wire.FLAG_REPLY:
            self._on_reply(frame.request_id, message)
        else:
            self._on_request(frame.request_id, message)

    def _expect_hello(self, message: wire.Message) -> None:
        if self._peer_id is None:
            raise wire.ProtocolError("message before the TLS handshake completed")
        if not isinstance(message, wire.Hello):
            raise wire.ProtocolError(f"expected HELLO, got {type(message).__name__}")
        if message.version != wire.PROTOCOL_VERSION:
            self._refuse(
                f"protocol version {message.version} not supported "
                f"(this node speaks {wire.PROTOCOL_VERSION})"
            )
            return
        if message.node_id != self._peer_id:
            raise wire.ProtocolError("HELLO node id does not match the TLS certificate")
        refusal = self.factory.admission.refuse_proof(self._binding(), self._peer_id, message.proof)
        if refusal is not None:
            self._refuse(f"admission refused: {refusal}")
            return
        refusal = self._over_limit(self._peer_id)
        if refusal is not None:
            self._refuse(refusal)
            return
        if self.dialled is None:
            self.send(self.factory.hello(self._binding()), 0)
        self._cancel_timeout()
        self.peer = PeerInfo(
            node_id=self._peer_id,
            org=message.org,
            listen=message.listen,
            address=self.dialled or self._address(),
            box_key=message.box_key,
        )
        log.info(
            "peer {org} ({node_id}) connected at {address}",
            org=message.org,
            node_id=self._peer_id,
            address=self.peer.address,
        )
        self._authenticated()
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = self.factory.clock
        self._pinger.start(PING_INTERVAL, now=False)
        if self.factory.registry is not None:
            self.factory.registry.add(self)
        self.factory.handler.session_ready(self)
        self.ready.callback(self)

    def _over_limit(self, node_id: str) -> str | None:
        """Why this session may not join the others (None: it may).

        A node reconnecting replaces its older accepted session (a link that died
        silently lingers until the ping notices); past `max_sessions` a new one is
        refused. So however many connections one node or many made-up ids open,
        they hold a bounded amount of this node's memory.
        """
        registry = self.factory.registry
        if registry is None:
            return None
        sessions = registry.sessions()
        replaced = [
            s
            for s in sessions
            if self.dialled is None and s.dialled is None and s.info.node_id == node_id
        ]
        for older in replaced:
            older.close("replaced by a newer connection from the same node")
        limit = self.factory.limits.max_sessions
        if len(sessions) - len(replaced) >= limit:
            return f"too many peers connected (this node takes {limit})"
        return None

    def _ping(self) -> None:
        now = self.factory.clock.seconds()
        if self._ping_outstanding:
            silent = now - self._last_received
            # While we hold reading ourselves, silence is ours, not the peer's.
            if silent >= self.factory.limits.ping_timeout and not self._read_holds:
                self.close(f"no answer to PING and nothing received for {silent:.0f}s")
            return

        def answered(_: object) -> None:
            self._ping_outstanding = False
            self.rtt = self.factory.clock.seconds() - now

        self._ping_outstanding = True
        self.request(wire.Ping()).addCallbacks(answered, lambda _: None)

    def _on_request(self, request_id: int, message: wire.Message) -> None:
        handler = self.factory.handler
        if isinstance(message, wire.Data):
            sink = self._incoming.get(request_id)
            if sink is None:
                raise wire.ProtocolError(f"DATA for unknown request {request_id}")
            if not isinstance(sink, _Discard):
                try:
                    sink.write(message.payload)
                except RequestRefused as e:
                    # Refused mid-stream (a quota): drop the rest of it.
                    sink.abort(e.message)
                    self._incoming[request_id] = sink = _Discard()
                    self.send(wire.Error(e.code, e.message[:512]), request_id, reply=True)
            if message.end:
                del self._incoming[request_id]
                if not isinstance(sink, _Discard):
                    self._answer(request_id, sink.finish().addCallback(lambda _: wire.Ack()))
            return
        if isinstance(message, wire.Abort):
            self._on_abort(request_id, message.reason)
            return
        if request_id in self._incoming or request_id in self._serving:
            raise wire.ProtocolError(f"request id {request_id} reused while active")
        limit = self.factory.limits.max_streams
        if isinstance(message, wire.Store):
            active = sum(not isinstance(s, _Discard) for s in self._incoming.values())
            try:
                if active >= limit:
                    raise RequestRefused("busy", f"at most {limit} transfers at once")
                self._incoming[request_id] = handler.open_store(self, message)
            except RequestRefused as e:
                self._incoming[request_id] = _Discard()
                self.send(wire.Error(e.code, e.message[:512]), request_id, reply=True)
        elif isinstance(message, wire.Fetch):
            try:
                if len(self._serving) >= limit:
                    raise RequestRefused("busy", f"at most {limit} transfers at once")
                source = handler.open_fetch(self, message)
            except RequestRefused as e:
                self.send(wire.Error(e.code, e.message[:512]), request_id, reply=True)
                return
            self._serving[request_id] = source
            self.send(wire.FetchReply(source.size), request_id, reply=True)
            self._pump(request_id, source)
        elif isinstance(message, wire.Ping):
            self.send(wire.Ack(), request_id, reply=True)
        elif isinstance(message, wire.ControlRequest):
            self._answer(request_id, maybeDeferred(handler.answer, self, message))
        else:
            raise wire.ProtocolError(f"unexpected {type(message).__name__} request")

    def _on_abort(self, request_id: int, reason: str) -> None:
        sink = self._incoming.pop(request_id, None)
        if sink is not None and not isinstance(sink, _Discard):
            sink.abort(f"peer aborted: {reason}")
        source = self._serving.pop(request_id, None)
        if source is not None:
            source.close()
            self.send(wire.Error("aborted", "fetch aborted"), request_id, reply=True)

    def _answer(self, request_id: int, result: Deferred[wire.Message]) -> None:
        def failed(failure: Failure) -> wire.Message:
            if failure.check(RequestRefused):
                e: RequestRefused = failure.value  # type: ignore[assignment]
                return wire.Error(e.code, e.message[:512])
            log.failure("request {request_id} failed", failure, request_id=request_id)
            return wire.Error("io", "internal error")

        result.addErrback(failed).addCallback(
            lambda message: self.send(message, request_id, reply=True)
        )

    def _pump(self, request_id: int, source: BlobSource) -> None:
        """Send a blob as DATA frames, as fast as the transport takes them."""

        def more(_: object = None) -> None:
            while request_id in self._serving:
                if self.paused:
                    self.when_writable().addCallbacks(more, lambda f: None)
                    return
                chunk = source.read(DATA_FRAME)
                end = len(chunk) < DATA_FRAME
                self.send_data(request_id, chunk, end=end, reply=True)
                if end:
                    self._serving.pop(request_id, None)
                    source.close()

        more()

    def _on_reply(self, request_id: int, message: wire.Message) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            raise wire.ProtocolError(f"reply for unknown request {request_id}")
        if isinstance(message, wire.Data):
            if not pending.streaming:
                raise wire.ProtocolError(f"DATA before FETCH_REPLY for {request_id}")
            if pending.sink is not None:
                pending.sink.data(message.payload)
            if message.end:
                del self._pending[request_id]
                if not pending.reply.called:
                    pending.reply.callback(wire.Ack())
            return
        if isinstance(message, wire.FetchReply):
            if pending.streaming:
                raise wire.ProtocolError(f"second FETCH_REPLY for {request_id}")
            pending.streaming = True
            if pending.sink is not None:
                pending.sink.started(message.size)
            return
        del self._pending[request_id]
        if pending.reply.called:
            return
        if isinstance(message, wire.Error):
            pending.reply.errback(RemoteError(message.code, message.message))
        else:
            pending.reply.callback(message)


class PeerFactory(Factory[PeerProtocol]):
    """Builds PeerProtocols sharing one identity, pin store and handler."""

    noisy = False

    def __init__(
        self,
        identity: NodeIdentity,
        pins: PeerPins,
        handler: SessionHandler,
        org: str,
        listen: str,
        clock: IReactorTime,
        on_refused: Callable[[str, str], None] | None = None,
        admission: Admission | None = None,
        limits: Limits | None = None,
        registry: SessionRegistry | None = None,
    ) -> None:
        self.identity = identity
        self.registry = registry
        self.pins = pins
        self.handler = handler
        self.org = org
        self.listen = listen
        self.clock = clock
        self._on_refused = on_refused
        self.admission = admission or Admission()
        self.limits = limits or Limits()
        # Connections still in TLS or HELLO, oldest first, by remote host; shared
        # with the copies dialling() makes.
        self._waiting: dict[str, list[PeerProtocol]] = {}
        # Set on a factory that dials one configured address: its protocols pin it.
        self.dialled: str | None = None

    def waiting(self, protocol: PeerProtocol) -> None:
        """Count a new connection awaiting its handshake; drop the oldest past a bound."""
        host = protocol.remote_host()
        self._waiting.setdefault(host, []).append(protocol)
        if len(self._waiting[host]) > self.limits.max_unauthenticated_per_host:
            oldest = self._waiting[host][0]
        elif sum(map(len, self._waiting.values())) > self.limits.max_unauthenticated:
            oldest = max(self._waiting.values(), key=len)[0]
        else:
            return
        self.admitted(oldest)
        oldest.close("too many connections awaiting their handshake; dropped the oldest")

    def admitted(self, protocol: PeerProtocol) -> None:
        """A connection no longer awaits its handshake (done, or closed)."""
        host = protocol.remote_host()
        waiting = self._waiting.get(host, [])
        if protocol in waiting:
            waiting.remove(protocol)
        if not waiting:
            self._waiting.pop(host, None)

    def dialling(self, address: str) -> PeerFactory:
        """A factory like this one for dialling ``address``."""
        factory = copy.copy(self)
        factory.dialled = address
        return factory

    def hello(self, binding: bytes | None) -> wire.Hello:
        return wire.Hello(
            version=wire.PROTOCOL_VERSION,
            node_id=self.identity.node_id,
            org=self.org,
            listen=self.listen,
            proof=self.admission.proof(binding, self.identity.node_id),
            box_key=self.identity.box_public,
        )

    def refused(self, address: str, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(address, reason)

    def buildProtocol(self, addr: object) -> PeerProtocol:
        p = PeerProtocol(dialled=self.dialled)
        p.factory = self
        return p
