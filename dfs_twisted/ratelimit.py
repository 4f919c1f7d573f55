"""How fast a node answers each peer: a token bucket per peer node id.

Shared by all the sessions of a peer (one at a time), so a peer that connects again
starts where it left off instead of with a fresh burst; what it asks beyond the
rate waits (mux.py). Memory stays bounded however many ids a peer makes up.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ANSWER_BURST", "ANSWER_RATE", "RateLimit"]

# An honest peer asks one request at a time (a sync descends a namespace's tree) or a
# few; a full listing of a million blobs is 7,800 pages; deletions come one per file.
ANSWER_RATE = 200.0  # a peer's control requests answered a second, at most
ANSWER_BURST = 200.0  # ... and at once
_MAX_PEERS = 4096  # buckets kept, at least, before the full ones are forgotten


class RateLimit:
    """A token bucket per peer: ``rate`` a second, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, when)
        self._keep = _MAX_PEERS  # buckets kept before the full ones are forgotten

    def take(self, peer: str) -> bool:
        now = self._clock()
        tokens, then = self._buckets.get(peer, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[peer] = (tokens, now)
            return False
        self._buckets[peer] = (tokens - 1, now)
        if len(self._buckets) > self._keep:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        """Forget the buckets full again by now: they lose nothing. What is left is the
        peers answered within the last burst's time; many of them raise the bar for
        the next time, so that this stays rare."""
        self._buckets = {
            peer: (tokens, when)
            for peer, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * self.rate < self._burst
        }
        self._keep = max(_MAX_PEERS, 2 * len(self._buckets))
