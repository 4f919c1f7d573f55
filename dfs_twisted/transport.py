"""TLS for peer links: Twisted's memory-BIO TLS, tuned for bulk transfers.

Twisted's TLS transport hands OpenSSL 16 KiB at a time, copying each slice,
drains 32 KiB of records per call, and delivers each 16 KiB record up the stack
on its own. For replication (gigabytes to several peers from one process) that
Python overhead, not the cipher, is the bottleneck. `BulkTLSProtocol` hands
OpenSSL 256 KiB per call without slicing copies, drains all pending records at
once and delivers received records in batches; small writes still go through
Twisted's aggregator. It overrides private methods of `TLSMemoryBIOProtocol`;
the tests that move files between real nodes exercise them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

SEND_SLICE = 256 * 1024  # plaintext handed to OpenSSL per call
DRAIN = 1 << 20  # TLS records read out per call
RECV_SLICE = 1 << 16  # plaintext asked of OpenSSL per call (it returns one record)
DELIVER = 1 << 20  # plaintext handed to the protocol per call, at most
BULK = 64_000  # writes at least this big bypass the small-write aggregator


class _Buffers:
    """Scratch buffers lent to a connection for the length of one call.

    Everything runs on the reactor thread, so a buffer is only ever in use by the
    call that took it (a nested call takes another): a connection holds no buffer
    between calls, and an idle session costs kilobytes, not megabytes.
    """

    def __init__(self, make: Any) -> None:
        self._make = make
        self._free: list[Any] = []

    def take(self) -> Any:
        return self._free.pop() if self._free else self._make()

    def give(self, buffer: Any) -> None:
        if len(self._free) < 4:
            self._free.append(buffer)


def _plain_buffer() -> tuple[bytearray, Any]:
    # Decrypted records collect here; it is never resized (the pointer stays valid).
    plain = bytearray(DELIVER + RECV_SLICE)
    return plain, _ffi.from_buffer(plain)


_RECORDS = _Buffers(lambda: _ffi.new("char[]", DRAIN))
_PLAIN = _Buffers(_plain_buffer)


class BulkTLSProtocol(BufferingTLSTransport):
    def __init__(self, factory: TLSMemoryBIOFactory, wrappedProtocol: IProtocol, *a: Any) -> None:
        super().__init__(factory, wrappedProtocol, *a)
        self.write = self._write_bulk  # type: ignore[method-assign]
        self._hold_records = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        # pyOpenSSL turns on partial writes, with which each send returns after one
        # 16 KiB record: one pass of the loop in `_write`, one drain of the BIO and
        # one system call per record (measured: 64 a MiB to each peer). Into a
        # memory BIO a write never blocks, so without them OpenSSL seals the whole
        # slice in one call and it leaves in one system call.
        _lib.SSL_clear_mode(self._tlsConnection._ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)

    def _write_bulk(self, data: bytes | memoryview) -> None:
        if len(data) < BULK:
            self._aggregator.write(bytes(data))  # it takes bytes only; a small copy
            return
        # Earlier small writes (frame headers) go first; their records wait in the
        # BIO and leave with the big write's, in one system call instead of two.
        self._hold_records = True
        try:
            self._aggregator.flush()
        finally:
            self._hold_records = False
        TLSMemoryBIOProtocol.write(self, data)

    def writeSequence(self, sequence: Iterable[bytes | memoryview]) -> None:
        # No join: a small header goes to the aggregator, a big payload straight on.
        for data in sequence:
            self._write_bulk(data)

    def _write(self, bytes: bytes) -> None:
        if self._lostTLSConnection:
            return
        view = memoryview(bytes)
        done = 0
        while done < len(view):
            try:
                done += self._tlsConnection.send(view[done : done + SEND_SLICE])
            except WantReadError:
                self._bufferedWrite(view[done:].tobytes())
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                break
            if not self._hold_records:
                self._flushSendBIO()

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        """RFC 8446 exporter: the same on both ends of this TLS session only."""
        return bytes(self._tlsConnection.export_keying_material(label, length))

    def _flushReceiveBIO(self) -> None:
        # As Twisted's, but records are decrypted one after the other into one
        # reused buffer and handed on in batches of up to DELIVER bytes (one copy),
        # instead of a new bytes object per 16 KiB record, each handed up the stack.
        connection = self._tlsConnection
        buffer = _PLAIN.take()
        plain, at = buffer
        size = 0
        try:
            while not self._lostTLSConnection:
                n = _lib.SSL_read(connection._ssl, at + size, RECV_SLICE)
                if n > 0:
                    size += n
                    if size >= DELIVER:
                        self._deliver(plain, size)
                        size = 0
                    continue
                try:
                    connection._raise_ssl_error(connection._ssl, n)
                except WantReadError:
                    break
                except ZeroReturnError:
                    self._deliver(plain, size)
                    size = 0
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
                except Error:
                    self._deliver(plain, size)
                    size = 0
                    self._tlsShutdownFinished(Failure())
            self._deliver(plain, size)
        finally:
            _PLAIN.give(buffer)
        self._flushSendBIO()

    def _deliver(self, plain: bytearray, size: int) -> None:
        if size and not self._aborted:
            with memoryview(plain) as view:
                ProtocolWrapper.dataReceived(self, view[:size].tobytes())

    def _flushSendBIO(self) -> None:
        # Records go from OpenSSL's buffer into one reused buffer and, while the
        # transport has nothing queued, straight to the socket: no bytes object
        # per drain and no copy into Twisted's send buffer. pyOpenSSL's bio_read
        # would make two copies of every byte sent.
        transport: Any = self.transport
        assert transport is not None
        buffer = _RECORDS.take()
        try:
            while True:
                n = _lib.BIO_read(self._tlsConnection._from_ssl, buffer, DRAIN)
                if n <= 0:
                    return  # nothing pending (a memory BIO cannot fail otherwise)
                records = _ffi.buffer(buffer, n)
                sent = 0
                sock = getattr(transport, "socket", None)
                if sock is not None and not transport.dataBuffer and not transport._tempDataBuffer:
                    try:
                        sent = sock.send(records)
                    except OSError:
                        sent = 0  # would block, or broken: Twisted's own write finds out
                if sent < n:
                    transport.write(records[sent:])  # a copy: the buffer goes back
        finally:
            _RECORDS.give(buffer)


class BulkTLSFactory(TLSMemoryBIOFactory):
    protocol = BulkTLSProtocol
    noisy = False


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """Like `wrapClientTLS`, with the bulk TLS protocol."""

    def __init__(
        self, creator: IOpenSSLClientConnectionCreator, endpoint: IStreamClientEndpoint
    ) -> None:
        self._creator = creator
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = BulkTLSFactory(self._creator, True, protocolFactory)
        d: Deferred[Any] = self._endpoint.connect(factory)
        return d.addCallback(_unwrap)


def _unwrap(tls: Any) -> IProtocol:
    protocol: IProtocol = tls.wrappedProtocol
    return protocol
