"""The peer protocol: glue between a TLS connection and the layers of a session.

A `PeerProtocol` owns one connection. It feeds received bytes to the frame parser
(`wire.FrameDecoder`), frames before the session is ready to the `Handshake` (TLS,
then HELLO, as explicit states), and frames after it to the `Multiplexer`
(requests and streams, no I/O), which hands what the peer asks to the
`SessionHandler` (the file logic). `Liveness` pings the peer and watches transfers
for stalls. What remains here is the wiring: the transport, the timers, the limits
on connections and sessions, and the log lines.

Flow control: the protocol registers itself as the streaming producer of its
transport, so a peer that reads slowly pauses it; senders of bulk data wait on
`when_writable()` before writing more. Holders of reading (a slow disk or client)
pause the transport's reading in turn. A peer that reads as fast as we send never
pauses the transport (TLS records go straight to the socket), so the link also
pauses itself after `TURN_BYTES` of blob data until the reactor's next turn: a
sender then hears a refusal or an abort within a few megabytes instead of after
the whole blob, and the node's other connections and timers are not starved.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import wire
from .admission import EXPORTER_LABEL, EXPORTER_LENGTH, Admission
from .handshake import Close, Handshake, Ready, Refuse, SendHello, Step
from .identity import NodeIdentity, PeerPins, node_id_of
from .liveness import PING_INTERVAL, Liveness
from .mux import (
    DATA_FRAME,
    AnswerRate,
    IncomingBlob,
    Multiplexer,
    OutgoingStream,
    RequestRefused,
    SessionHandler,
)
from .ratelimit import ANSWER_BURST, ANSWER_RATE, RateLimit
from .session import BlobSource, FetchSink, PeerInfo, RemoteError, SessionClosed

__all__ = [
    "DATA_FRAME",
    "PING_INTERVAL",
    "BlobSource",
    "IncomingBlob",
    "Limits",
    "OutgoingStream",
    "PeerFactory",
    "PeerInfo",
    "PeerProtocol",
    "RemoteError",
    "RequestRefused",
    "SessionClosed",
    "SessionHandler",
]

log = Logger()

TURN_BYTES = 4 << 20  # blob data sent before bulk senders wait for the reactor's next turn


@dataclass(frozen=True)
class Limits:
    """What one connection may cost this node."""

    handshake_timeout: float = 30.0  # TLS and HELLO must be done by then
    stall_timeout: float = 120.0  # a frame or transfer that receives nothing this long
    # A PING unanswered, and nothing else received, for this long: the peer is
    # unreachable (a cut link sends no FIN; TCP alone would notice in ~15 minutes).
    ping_timeout: float = 30.0
    ping_interval: float = PING_INTERVAL  # seconds between PINGs of a ready session
    max_streams: int = 16  # concurrent STOREs received, and FETCHes served, per connection
    # Connections still in TLS or HELLO at once, in all and from one address: past
    # either bound the oldest waiting one is dropped, so idle sockets cannot lock
    # out a peer that completes its handshake promptly.
    max_unauthenticated: int = 64
    max_unauthenticated_per_host: int = 16
    # Authenticated sessions at once: node ids cost nothing to make, and every session
    # costs memory. One accepted session per node id: a newer one replaces it.
    max_sessions: int = 128


class SessionRegistry(TypingProtocol):
    """Where ready sessions are kept (peers.PeerRegistry)."""

    def sessions(self) -> list[PeerProtocol]: ...
    def add(self, session: PeerProtocol) -> None: ...
    def remove(self, session: PeerProtocol, reason: str) -> None: ...


@implementer(IHandshakeListener, IPushProducer)
class PeerProtocol(Protocol):
    """One TLS connection to another node."""

    factory: PeerFactory

    def __init__(self, dialled: str | None = None) -> None:
        # The address we dialled (for pinning), None for an accepted connection.
        self.dialled = dialled
        self.peer: PeerInfo | None = None  # set once the handshake is done
        self.ready: Deferred[PeerProtocol] = Deferred()
        self.bytes_in = 0
        self._decoder = wire.FrameDecoder()
        self._read_holds: set[object] = set()
        self._send_paused = False  # by the transport: the peer reads slower than we write
        self._turn_sent = 0  # blob bytes sent since the link last waited for a turn
        self._next_turn_call: Any = None  # set while the link waits for the next turn
        self._counted = False
        self._closing = False
        self._timeout: Any = None

    @property
    def info(self) -> PeerInfo:
        """Who the peer is: only asked of a session whose handshake is done."""
        if self.peer is None:
            raise SessionClosed("the session's handshake is not done")
        return self.peer

    @property
    def closed(self) -> bool:
        return self._closing or self.transport is None

    @property
    def paused(self) -> bool:
        """The peer reads slower than we write: wait for `when_writable`."""
        return self._mux.paused

    @property
    def bytes_out(self) -> int:
        return self._mux.bytes_out

    @property
    def rtt(self) -> float | None:
        """Seconds, from the last answered PING."""
        return self._liveness.rtt

    # -- connection life cycle

    def connectionMade(self) -> None:
        factory = self.factory
        self._mux = Multiplexer(
            self,
            factory.handler,
            self,
            factory.limits.max_streams,
            AnswerRate(factory.clock, factory.answers),
        )
        self._handshake = Handshake(
            factory.identity.node_id,
            self.dialled,
            factory.admission,
            factory.pins,
            self._binding,
            self._over_limit,
            self._address,
        )
        self._liveness = Liveness(
            factory.clock,
            lambda: self.request(wire.Ping()),
            lambda: self._decoder.buffered > 0 or self._mux.busy,
            lambda: bool(self._read_holds),
            self.close,
            factory.limits.ping_timeout,
            factory.limits.stall_timeout,
            factory.limits.ping_interval,
        )
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        factory.waiting(self)
        self._counted = True
        tcp = getattr(self.transport, "transport", None)
        if tcp is not None:
            # Bigger reads and send buffer for bulk sessions (measured: about 2x).
            tcp.bufferSize = 4 << 20
            tcp.SEND_LIMIT = 1 << 20
            # Small frames (a STORE's end, its answer) leave at once: with Nagle's
            # algorithm and the peer's delayed ACKs, each small put waited ~40 ms
            # for its replies (measured: 125 small puts/s before, 240 after).
            no_delay = getattr(tcp, "setTcpNoDelay", None)
            if no_delay is not None:
                no_delay(True)
        self._timeout = factory.clock.callLater(
            factory.limits.handshake_timeout, self.close, "handshake timed out"
        )

    def handshakeCompleted(self) -> None:
        cert = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        self._do(
            self._handshake.tls_done(None if cert is None else node_id_of(cert.to_cryptography()))
        )

    def _do(self, steps: list[Step]) -> None:
        """Carry out what the handshake decided."""
        for step in steps:
            if isinstance(step, Close):
                self.close(step.reason)
            elif isinstance(step, Refuse):
                self._refuse(step.reason)
            elif isinstance(step, SendHello):
                self.send(self.factory.hello(self._binding()), 0)
            elif isinstance(step, Ready):
                self._ready(step.info)

    def _ready(self, info: PeerInfo) -> None:
        self._cancel_timeout()
        self.peer = info
        log.info(
            "peer {org} ({node_id}) connected at {address}",
            org=info.org,
            node_id=info.node_id,
            address=info.address,
        )
        self._authenticated()
        self._liveness.start()
        if self.factory.registry is not None:
            self.factory.registry.add(self)
        self.factory.handler.session_ready(self)
        self.ready.callback(self)

    def _authenticated(self) -> None:
        """No longer counted as a connection awaiting its handshake."""
        if self._counted:
            self._counted = False
            self.factory.admitted(self)

    def _binding(self) -> bytes | None:
        """Keying material exported from this TLS session, to bind admission proofs."""
        export = getattr(self.transport, "export_keying_material", None)
        return None if export is None else bytes(export(EXPORTER_LABEL, EXPORTER_LENGTH))

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
        self._handshake.closed()
        self._cancel_timeout()
        if self._next_turn_call is not None:
            self._next_turn_call.cancel()
            self._next_turn_call = None
        self._authenticated()
        self._liveness.stop()
        why = reason.getErrorMessage() if reason is not None else "closed"
        self._mux.close(why)
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
        who = self.peer.org if self.peer else (self._handshake.peer_id or "unauthenticated")
        log.warn(
            "closing peer connection {peer} at {address}: {reason}",
            peer=who,
            address=self._address(),
            reason=reason,
        )
        if tell_peer:
            self.send(wire.Error("refused", reason[:512]), 0, reply=True)
        self._closing = True
        self._mux.closed = True  # nothing more is sent
        if tell_peer:
            self.disconnect()
        elif self.transport is not None:
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
        if timeout is not None and timeout.active():
            timeout.cancel()

    def remote_host(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        return str(getattr(peer, "host", "?"))

    def _address(self) -> str:
        peer = self.transport.getPeer() if self.transport else None
        host = getattr(peer, "host", "?")
        port = getattr(peer, "port", "?")
        return f"{host}:{port}"

    # -- the producer of the transport's writes

    def pauseProducing(self) -> None:
        self._send_paused = True
        self._mux.paused = True

    def resumeProducing(self) -> None:
        self._send_paused = False
        if self._next_turn_call is None:
            self._mux.writable()

    def _next_turn(self) -> None:
        self._next_turn_call = None
        self._turn_sent = 0
        if not self._send_paused and not self._closing:
            self._mux.writable()

    def stopProducing(self) -> None:
        self._send_paused = True
        self._mux.paused = True

    # -- holding the transport's reads

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

    # -- the session, for the file logic (session.PeerSession)

    def when_writable(self) -> Deferred[None]:
        """Fires once the transport wants more data."""
        if self._closing:
            return fail(SessionClosed("connection closed"))
        return self._mux.when_writable()

    def send(self, message: wire.Message, request_id: int, *, reply: bool = False) -> None:
        self._mux.send(message, request_id, reply=reply)

    def request(self, message: wire.ControlRequest | wire.Ping) -> Deferred[wire.Message]:
        """Send a control request; the Deferred fires with the reply message."""
        return self._mux.request(message)

    def store(self, message: wire.Store) -> OutgoingStream:
        return self._mux.store(message)

    def fetch(self, message: wire.Fetch, sink: FetchSink) -> Deferred[wire.Message]:
        """Ask for a blob; ``sink`` gets its size then its bytes. Fires at the end."""
        return self._mux.fetch(message, sink)

    # -- mux.Output: where frames go

    def frame(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def data(self, header: bytes, payload: bytes | memoryview) -> None:
        # BulkTLSProtocol takes a memoryview payload without copying it.
        self.transport.writeSequence([header, payload])  # type: ignore[union-attr, list-item]
        self._turn_sent += len(payload)
        if self._turn_sent >= TURN_BYTES and self._next_turn_call is None:
            self._mux.paused = True
            self._next_turn_call = self.factory.clock.callLater(0, self._next_turn)

    # -- receiving

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._liveness.received()
        try:
            for frame in self._decoder.feed(data):
                if self._closing:
                    return
                self._dispatch(frame, wire.decode(frame))
        except wire.ProtocolError as e:
            self.close(f"protocol error: {e}")
            return
        self._liveness.watch()

    def _dispatch(self, frame: wire.Frame, message: wire.Message) -> None:
        if isinstance(message, wire.Error) and frame.request_id == 0:
            # The peer refuses this connection (admission, pinning) and says why.
            reason = f"peer refused us: {message.message}"
            if self.dialled is not None:
                self.factory.refused(self.dialled, reason)
            self.close(reason)
        elif self.peer is None:
            self._do(self._handshake.hello(message))
        else:
            self._mux.received(frame, message)


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
        placed: bool = False,
    ) -> None:
        """``placed``: this org's files go to chosen peers, not relayed (see PeerInfo)."""
        self.identity = identity
        self.placed = placed
        self.registry = registry
        self.pins = pins
        self.handler = handler
        self.org = org
        self.listen = listen
        self.clock = clock
        self._on_refused = on_refused
        self.admission = admission or Admission()
        self.limits = limits or Limits()
        # How fast each peer's requests are answered, whichever session it comes by.
        self.answers = RateLimit(ANSWER_RATE, ANSWER_BURST, clock.seconds)
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
            features=(wire.PLACED,) if self.placed else (),
        )

    def refused(self, address: str, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(address, reason)

    def buildProtocol(self, addr: object) -> PeerProtocol:
        p = PeerProtocol(dialled=self.dialled)
        p.factory = self
        return p
