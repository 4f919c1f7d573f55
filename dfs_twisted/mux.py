"""Requests and streams of one peer session, multiplexed by request id: no I/O here.

Frames come in (`received`), frames go out through `Output` (two calls: a frame,
or a DATA header and its payload), and what the peer asks is handed to a
`SessionHandler`. A frame with FLAG_REPLY answers a request this side made; any
other is a request of the peer's, or the DATA of a stream it opened.

Flow control: the caller says when the link is `paused` (the peer reads slower than
we write) and when it is writable again; senders of bulk data wait on
`when_writable()`, and a FETCH this side serves is pumped only while it is writable,
its next piece read (off the reactor, by the source) while one goes out.

A peer's control requests (and PINGs) are answered in order, only while the link
takes what is sent and as fast as its rate allows (`AnswerRate`, ratelimit.py); the
others wait, and while `MAX_WAITING` or more wait the link is not read. A peer that asks
without reading the answers, or faster than that, is slowed by its own TCP window:
it costs this node a bounded share of its time and memory. (Measured before: 30,000
DIGESTs sent in 3 s without reading a reply grew a node by 516 MiB, and kept its
reactor busy for 27 s.)
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import wire
from .ratelimit import RateLimit
from .session import READ_BLOCK, BlobSource, FetchSink, PeerSession, RemoteError, SessionClosed

log = Logger()

# DATA frames are cut at this size: large enough to keep Python overhead low,
# small enough that a frame is a fraction of the transport's buffer.
DATA_FRAME = 256 * 1024


class RequestRefused(Exception):
    """Raised by a handler to answer a request with an Error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class IncomingBlob(TypingProtocol):
    """Where the bytes of a peer's STORE go."""

    def write(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> Deferred[None]: ...
    def abort(self, reason: str) -> None: ...


class SessionHandler(TypingProtocol):
    """What a node does with its peers' sessions and requests (the file logic)."""

    def session_ready(self, session: PeerSession) -> None: ...
    def session_lost(self, session: PeerSession, reason: str) -> None: ...
    def open_store(self, session: PeerSession, request: wire.Store) -> IncomingBlob: ...
    def open_fetch(self, session: PeerSession, request: wire.Fetch) -> Deferred[BlobSource]: ...
    def answer(
        self, session: PeerSession, request: wire.ControlRequest
    ) -> Deferred[wire.Message]: ...


MAX_WAITING = 64  # requests waiting for their answers before the link is no longer read


class AnswerRate:
    """The pace of one session's answers: its peer's share of ``limit``."""

    def __init__(self, clock: IReactorTime, limit: RateLimit) -> None:
        self._clock = clock
        self._limit = limit
        self._wakeup: IDelayedCall | None = None

    def take(self, peer: str) -> bool:
        return self._limit.take(peer)

    def call_when_ready(self, f: Callable[[], None]) -> None:
        """Call ``f`` once a request may be answered again (once, however often asked)."""
        if self._wakeup is None:
            # A whole token's time: the exact remainder may round to no time at all.
            self._wakeup = self._clock.callLater(1 / self._limit.rate, self._woken, f)

    def _woken(self, f: Callable[[], None]) -> None:
        self._wakeup = None
        f()

    def stop(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None


class Output(TypingProtocol):
    """Where frames go: the connection."""

    def frame(self, data: bytes) -> None: ...
    def data(self, header: bytes, payload: bytes | memoryview) -> None: ...


class _Discard:
    """An incoming stream we refused: its in-flight DATA frames are dropped."""


class _Opening:
    """The place of a FETCH whose blob is being opened."""

    size = 0

    def read(self, n: int) -> Deferred[bytes]:
        return fail(ValueError("not open yet"))

    def close(self) -> None:
        pass


@dataclass
class _Pending:
    reply: Deferred[wire.Message]
    sink: FetchSink | None = None
    streaming: bool = False


class OutgoingStream:
    """A STORE being sent: write ciphertext, then finish() to await the ack."""

    def __init__(self, mux: Multiplexer, request_id: int, reply: Deferred[wire.Message]):
        self._mux = mux
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
            self._mux.send(wire.Abort("refused"), self._id)
        return result

    def write(self, data: bytes | memoryview) -> None:
        if self.closed:
            return
        self._mux.send_frames(self._id, data, end=False, reply=False)
        self.sent += len(data)

    def finish(self) -> Deferred[wire.Message]:
        if not self.closed:
            self.closed = True
            self._mux.send_data(self._id, b"", end=True, reply=False)
        return self.reply

    def abort(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._mux.send(wire.Abort(reason[:512]), self._id)
            # Nobody awaits the answer of an aborted stream (if one ever comes).
            self.reply.addErrback(lambda _: None)


class Multiplexer:
    """The requests and streams of one session, both ways."""

    def __init__(
        self,
        session: PeerSession,
        handler: SessionHandler,
        output: Output,
        max_streams: int,
        rate: AnswerRate | None = None,
    ) -> None:
        """``rate``: how fast the peer's control requests are answered (None: as they
        come, while the link takes the answers)."""
        self._session = session  # what the handler is told a request came from
        self._handler = handler
        self._output = output
        self._max_streams = max_streams
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._incoming: dict[int, IncomingBlob | _Discard] = {}
        self._serving: dict[int, BlobSource] = {}
        self._rate = rate
        self._waiting: deque[tuple[int, wire.ControlRequest | wire.Ping]] = deque()
        self._holding = False  # not reading the link: too many requests wait
        self._writable: list[Deferred[None]] = []
        self.paused = False  # the peer reads slower than we write
        self.closed = False
        self.bytes_out = 0

    # -- sending

    def send(self, message: wire.Message, request_id: int, *, reply: bool = False) -> None:
        if self.closed:
            return
        frame = wire.encode(message, request_id, reply=reply)
        self.bytes_out += len(frame)
        self._output.frame(frame)

    def send_data(
        self, request_id: int, payload: bytes | memoryview, *, end: bool, reply: bool
    ) -> None:
        if self.closed:
            return
        header = wire.data_header(request_id, len(payload), end=end, reply=reply)
        self.bytes_out += len(header) + len(payload)
        self._output.data(header, payload)

    def send_frames(
        self, request_id: int, data: bytes | memoryview, *, end: bool, reply: bool
    ) -> None:
        """``data`` as DATA frames of at most `DATA_FRAME` bytes, views of it rather than
        copies (the link may keep them); with ``end`` the last one ends the stream (an
        empty one if ``data`` is)."""
        view = memoryview(data)
        for start in range(0, len(view), DATA_FRAME):
            last = end and start + DATA_FRAME >= len(view)
            self.send_data(request_id, view[start : start + DATA_FRAME], end=last, reply=reply)
        if end and not view:
            self.send_data(request_id, b"", end=True, reply=reply)

    def _new_request(self, sink: FetchSink | None = None) -> tuple[int, _Pending]:
        request_id = next(self._ids)
        pending = _Pending(Deferred(canceller=lambda d: self._cancel_request(request_id)), sink)
        if self.closed:
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

    # -- flow control

    def writable(self) -> None:
        """The link takes data again."""
        self.paused = False
        waiters, self._writable = self._writable, []
        for waiter in waiters:
            if self.paused:
                self._writable.append(waiter)
            else:
                waiter.callback(None)
        self._answer_waiting()

    def when_writable(self) -> Deferred[None]:
        """Fires once the link wants more data."""
        if self.closed:
            return fail(SessionClosed("connection closed"))
        if not self.paused:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._writable.append(d)
        return d

    @property
    def busy(self) -> bool:
        """A transfer is under way (the stall watchdog watches only then)."""
        return bool(self._incoming) or any(p.streaming for p in self._pending.values())

    # -- receiving

    def received(self, frame: wire.Frame, message: wire.Message) -> None:
        """A frame of the ready session (ProtocolError: the peer broke the protocol)."""
        if isinstance(message, wire.Hello):
            raise wire.ProtocolError("second HELLO")
        if frame.flags & wire.FLAG_REPLY:
            self._on_reply(frame.request_id, message)
        else:
            self._on_request(frame.request_id, message)

    def _on_request(self, request_id: int, message: wire.Message) -> None:
        if isinstance(message, wire.Data):
            self._on_data(request_id, message)
            return
        if isinstance(message, wire.Abort):
            self._on_abort(request_id, message.reason)
            return
        if request_id in self._incoming or request_id in self._serving:
            raise wire.ProtocolError(f"request id {request_id} reused while active")
        limit = self._max_streams
        if isinstance(message, wire.Store):
            active = sum(not isinstance(s, _Discard) for s in self._incoming.values())
            try:
                if active >= limit:
                    raise RequestRefused("busy", f"at most {limit} transfers at once")
                self._incoming[request_id] = self._handler.open_store(self._session, message)
            except RequestRefused as e:
                self._incoming[request_id] = _Discard()
                self.send(wire.Error(e.code, e.message[:512]), request_id, reply=True)
        elif isinstance(message, wire.Fetch):
            if len(self._serving) >= limit:
                busy = f"at most {limit} transfers at once"
                self.send(wire.Error("busy", busy), request_id, reply=True)
                return
            opening = _Opening()
            self._serving[request_id] = opening  # counted, and abortable, from now on
            Deferred.fromCoroutine(self._serve(request_id, message, opening)).addErrback(
                lambda f: log.failure("serving request {id} failed", f, id=request_id)
            )
        elif isinstance(message, wire.Ping | wire.ControlRequest):
            self._waiting.append((request_id, message))
            self._answer_waiting()
        else:
            raise wire.ProtocolError(f"unexpected {type(message).__name__} request")

    def _on_data(self, request_id: int, message: wire.Data) -> None:
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

    def _on_abort(self, request_id: int, reason: str) -> None:
        sink = self._incoming.pop(request_id, None)
        if sink is not None and not isinstance(sink, _Discard):
            sink.abort(f"peer aborted: {reason}")
        source = self._serving.pop(request_id, None)
        if source is not None:
            source.close()
            self.send(wire.Error("aborted", "fetch aborted"), request_id, reply=True)

    def _answer_waiting(self) -> None:
        """Answer the peer's waiting requests in order while the link takes the answers
        and the rate allows; stop reading the link while too many wait."""
        while self._waiting and not self.paused and not self.closed:
            if self._rate is not None and not self._rate.take(self._session.info.node_id):
                self._rate.call_when_ready(self._answer_waiting)
                break
            request_id, message = self._waiting.popleft()
            if isinstance(message, wire.Ping):
                self.send(wire.Ack(), request_id, reply=True)
            else:
                answer = maybeDeferred(self._handler.answer, self._session, message)
                self._answer(request_id, answer)
        if self.closed:
            return
        if not self._holding and len(self._waiting) >= MAX_WAITING:
            self._holding = True
            log.warn(
                "peer {peer} asks faster than it reads the answers or than they are given: "
                "{waiting} requests wait, its link is not read until they are answered",
                peer=self._session.info.node_id,
                waiting=len(self._waiting),
            )
            self._session.hold_reading(self)
        elif self._holding and len(self._waiting) <= MAX_WAITING // 2:
            self._holding = False
            self._session.release_reading(self)

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

    async def _serve(self, request_id: int, message: wire.Fetch, opening: _Opening) -> None:
        """Open the blob a FETCH asks for (its header read off the reactor), answer with
        its size, then send it."""
        try:
            source = await maybeDeferred(self._handler.open_fetch, self._session, message)
        except Exception as e:
            if self._serving.get(request_id) is opening:
                del self._serving[request_id]
                if isinstance(e, RequestRefused):
                    refusal = wire.Error(e.code, e.message[:512])
                else:
                    log.failure("opening the blob of request {id} failed", id=request_id)
                    refusal = wire.Error("io", "cannot read the blob")
                self.send(refusal, request_id, reply=True)
            return
        if self._serving.get(request_id) is not opening:
            source.close()  # aborted, or the link closed, while it was opened
            return
        self._serving[request_id] = source
        self.send(wire.FetchReply(source.size), request_id, reply=True)
        await self._pump(request_id, source)

    async def _pump(self, request_id: int, source: BlobSource) -> None:
        """Send a blob as DATA frames, as fast as the link takes them. Ends quietly
        once the FETCH is no longer served (aborted, or the link closed: the source
        was closed then, and a read of it fails)."""
        while True:
            try:
                piece = await source.read(READ_BLOCK)
            except Exception:
                if self._serving.pop(request_id, None) is not None:
                    log.failure("reading the blob of request {id} failed", id=request_id)
                    source.close()
                    self.send(wire.Error("io", "cannot read the blob"), request_id, reply=True)
                return
            try:
                while self.paused:
                    await self.when_writable()
            except SessionClosed:
                return
            if request_id not in self._serving:
                return  # aborted while it was read or waited
            end = len(piece) < READ_BLOCK
            self.send_frames(request_id, piece, end=end, reply=True)
            if end:
                del self._serving[request_id]
                source.close()
                return

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

    # -- the end

    def close(self, why: str) -> None:
        """The link is gone: everything in flight fails or is dropped."""
        self.closed = True
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
        self._waiting.clear()
        if self._rate is not None:
            self._rate.stop()
        writable, self._writable = self._writable, []
        for waiter in writable:
            waiter.errback(SessionClosed("connection lost"))
