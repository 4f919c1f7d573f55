"""Who may hold a connection to the HTTP API, and for how long.

Anyone who can reach the API port can open connections to it; only the token
holder is served. Without limits a local user could hold idle sockets until the
node runs out of file descriptors, and a header line every few seconds would keep
each one past any idle timeout. So:

- a connection that has not shown the token yet *waits*: at most `MAX_WAITING` of
  them in total and `MAX_WAITING_PER_ADDRESS` from one address; past that the
  oldest waiting one is dropped (a new client is let in, the longest idler goes);
- a waiting connection is dropped `WAITING_LIFETIME` seconds after it opened,
  whatever it sends (the status page and ``/health``, the only answers it can
  get, take milliseconds);
- every request head (request line and headers) must be complete within
  `HEAD_TIMEOUT` seconds of its first byte.

A request with the right token makes its connection trusted for good: the token
holder's connections are not counted, and live as long as twisted.web's idle
timeout allows. `WaitingConnections` is the bookkeeping, free of I/O;
`ApiChannel` applies it to twisted.web's HTTP connections.

On the Unix socket a request may come with a file descriptor (an upload's body,
attached.py): a connection holds at most one that no request has taken, and closes
it when it ends.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IFileDescriptorReceiver
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

log = Logger()

MAX_WAITING = 64
MAX_WAITING_PER_ADDRESS = 16
WAITING_LIFETIME = 10.0
HEAD_TIMEOUT = 10.0
# Seconds between two log lines about dropped connections (a flood must not flood the log).
LOG_EVERY = 10.0

C = TypeVar("C")


class WaitingConnections(Generic[C]):
    """Connections without the token yet, oldest first, bounded in total and per address."""

    def __init__(
        self, total: int = MAX_WAITING, per_address: int = MAX_WAITING_PER_ADDRESS
    ) -> None:
        if total < 1 or per_address < 1:
            raise ValueError("limits must be at least 1")
        self.total = total
        self.per_address = per_address
        self._waiting: OrderedDict[C, str] = OrderedDict()
        self._per_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, connection: object) -> bool:
        return connection in self._waiting

    def from_address(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def add(self, connection: C, address: str) -> list[C]:
        """Count a new connection; return those it pushes out (no longer counted)."""
        self._waiting[connection] = address
        self._per_address[address] = self.from_address(address) + 1
        out: list[C] = []
        if self._per_address[address] > self.per_address:
            oldest = next(c for c, a in self._waiting.items() if a == address)
            out.append(oldest)
            self.discard(oldest)
        if len(self._waiting) > self.total:
            oldest = next(iter(self._waiting))
            out.append(oldest)
            self.discard(oldest)
        return out

    def discard(self, connection: C) -> None:
        """No longer waiting (trusted, or gone); unknown connections are ignored."""
        address = self._waiting.pop(connection, None)
        if address is None:
            return
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]


class DropLog:
    """One log line per `LOG_EVERY` seconds about connections dropped, with a count."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._unlogged = 0

    def note(self, now: float, reason: str, address: str) -> None:
        self._unlogged += 1
        if self._last is not None and now - self._last < LOG_EVERY:
            return
        log.info(
            "API: dropped {count} connection(s) without the token, the last from {address}: "
            "{reason}",
            count=self._unlogged,
            address=address,
            reason=reason,
        )
        self._last = now
        self._unlogged = 0


@implementer(IFileDescriptorReceiver)
class ApiChannel(HTTPChannel):
    """One API connection: waiting until it shows the token, with a deadline per head.

    The site (`apiserver.ApiSite`) provides ``waiting`` and ``drops``, shared by all its
    channels, and the ``head_timeout`` and ``waiting_lifetime`` in seconds; the
    request calls `trust` once its headers carry the token.
    """

    site: Any

    def __init__(self) -> None:
        super().__init__()
        self.trusted = False
        self.dropped = False
        self.address = "?"
        self._in_head = True  # between requests, or reading a request head
        self._head_deadline: IDelayedCall | None = None
        self._waiting_deadline: IDelayedCall | None = None
        self._descriptor: int | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.address = str(getattr(peer, "host", peer))
        waiting = self.site.waiting
        for old in waiting.add(self, self.address):
            old.drop("too many connections without the API token")
        self._waiting_deadline = self.site.reactor.callLater(
            self.site.waiting_lifetime, self.drop, "no API token in time"
        )

    def dataReceived(self, data: bytes) -> None:
        if self._in_head and self._head_deadline is None and data:
            self._head_deadline = self.site.reactor.callLater(
                self.site.head_timeout, self.drop, "request head not complete in time"
            )
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._in_head = False
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        self._in_head = True
        super().requestDone(request)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if self._descriptor is not None:
            os.close(descriptor)
            self.drop("a second file descriptor before a request took the first")
            return
        self._descriptor = descriptor

    def take_descriptor(self) -> int | None:
        """The descriptor that came with the request head being read, if any: the
        caller closes it."""
        descriptor, self._descriptor = self._descriptor, None
        return descriptor

    def trust(self) -> None:
        """This connection showed the token: no longer waiting, no lifetime."""
        if self.trusted:
            return
        self.trusted = True
        self.site.waiting.discard(self)
        if self._waiting_deadline is not None and self._waiting_deadline.active():
            self._waiting_deadline.cancel()
        self._waiting_deadline = None

    def drop(self, reason: str) -> None:
        """Close at once (an abort: a client that reads nothing cannot hold it)."""
        self.site.waiting.discard(self)
        if self.dropped or self.transport is None:
            return
        self.dropped = True
        self.site.drops.note(self.site.reactor.seconds(), reason, self.address)
        transport: Any = self.transport
        transport.abortConnection()

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.waiting.discard(self)
        self._cancel_head_deadline()
        if self._waiting_deadline is not None and self._waiting_deadline.active():
            self._waiting_deadline.cancel()
        self._waiting_deadline = None
        descriptor = self.take_descriptor()
        if descriptor is not None:
            os.close(descriptor)
        super().connectionLost(reason)


__all__ = ["ApiChannel", "DropLog", "WaitingConnections"]
