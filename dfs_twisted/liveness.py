"""Is the peer still there? A ping every few seconds, and a watchdog on transfers.

Two ways a link goes bad without closing: a cut cable sends no FIN (TCP alone would
notice in about 15 minutes), and a peer may start a frame or a transfer and then go
quiet. The first is caught by a PING that stays unanswered while nothing else
arrives (`ping_timeout`), the second by a watchdog that runs while a transfer is
under way (`stall_timeout`). Neither blames the peer for a silence that is ours:
while this side holds reading (a slow disk or client), the clocks do not run.
Like Twisted's TimeoutMixin, but for two conditions, and fed by the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

PING_INTERVAL = 10.0  # seconds between round-trip measurements of a session


class Liveness:
    def __init__(
        self,
        clock: IReactorTime,
        ping: Callable[[], Deferred[Any]],
        busy: Callable[[], bool],
        holding: Callable[[], bool],
        close: Callable[[str], None],
        ping_timeout: float,
        stall_timeout: float,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        """``busy()``: a transfer is under way; ``holding()``: this side holds reading."""
        self._clock = clock
        self._ping = ping
        self._busy = busy
        self._holding = holding
        self._close = close
        self._ping_timeout = ping_timeout
        self._stall_timeout = stall_timeout
        self._ping_interval = ping_interval
        self._pinger: task.LoopingCall | None = None
        self._outstanding = False
        self._stall: Any = None
        self.last_received = clock.seconds()
        self.rtt: float | None = None  # seconds, from the last answered PING

    def received(self) -> None:
        """Something came from the peer."""
        self.last_received = self._clock.seconds()

    def start(self) -> None:
        """The session is ready: start pinging."""
        self._pinger = task.LoopingCall(self._tick)
        self._pinger.clock = self._clock
        self._pinger.start(self._ping_interval, now=False)

    def watch(self) -> None:
        """Look out for a stall, if a transfer is under way (after each receipt)."""
        if self._stall is None and self._pinger is not None and self._busy():
            self._stall = self._clock.callLater(self._stall_timeout, self._check_stall)

    def stop(self) -> None:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _check_stall(self) -> None:
        self._stall = None
        if not self._busy():
            return
        limit = self._stall_timeout
        now = self._clock.seconds()
        if self._holding():
            self.last_received = now  # we stopped reading: not the peer's fault
        quiet = now - self.last_received
        if quiet >= limit:
            self._close(f"stalled: nothing received for {quiet:.0f}s in the middle of a transfer")
        else:
            self._stall = self._clock.callLater(limit - quiet, self._check_stall)

    def _tick(self) -> None:
        now = self._clock.seconds()
        if self._outstanding:
            silent = now - self.last_received
            if silent >= self._ping_timeout and not self._holding():
                self._close(f"no answer to PING and nothing received for {silent:.0f}s")
            return

        def answered(_: object) -> None:
            self._outstanding = False
            self.rtt = self._clock.seconds() - now

        self._outstanding = True
        self._ping().addCallbacks(answered, lambda _: None)
