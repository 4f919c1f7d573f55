"""Nodes' file logic linked in memory: no TLS, no sockets, no threads.

`MemoryNode` assembles the same pieces as `node.NodeService` (holdings, ledger,
server, sync, fetcher, auditor, recovery) over a real store in a temp directory,
with disk work done inline. `link(a, b)` joins two nodes with a pair of sessions
whose frames go through the real `Multiplexer` and the real wire encoder and
decoder, delivered in order once the current delivery is done (no re-entry), so
put, serve, sync and recover can be tested one step at a time, synchronously.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dfs_twisted import wire
from dfs_twisted.crypto import OrgKey, owner_id
from dfs_twisted.diskqueue import DiskQueue
from dfs_twisted.erasure import Erasure
from dfs_twisted.files.audit import Auditor
from dfs_twisted.files.collect import Collector, Horizons
from dfs_twisted.files.fetch import Fetcher
from dfs_twisted.files.holdings import Holdings, load_catalog
from dfs_twisted.files.owner import Owner
from dfs_twisted.files.placement import Placement, Redundancy
from dfs_twisted.files.put import PutResult, Upload, recipients
from dfs_twisted.files.recover import Recovery
from dfs_twisted.files.serve import Server
from dfs_twisted.files.sync import Sync
from dfs_twisted.identity import KnownOrgs
from dfs_twisted.index import StoreIndex
from dfs_twisted.ledger import Ledger
from dfs_twisted.mux import Multiplexer, SessionHandler
from dfs_twisted.session import BlobStream, FetchSink, PeerInfo, PeerSession
from dfs_twisted.space import SpaceAccount, SpaceLimits
from dfs_twisted.store import BlobStore

__all__ = ["MemoryNode", "MemorySession", "link", "outcome", "pump", "settled"]


class InlineDisk(DiskQueue):
    """The disk queue with its work done at once, on the calling thread."""

    def __init__(self) -> None:
        pass  # no thread pool: run() does the work itself

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return maybeDeferred(f, *args)

    def sync(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return maybeDeferred(f, *args)

    def write(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return maybeDeferred(f, *args)

    def read(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return maybeDeferred(f, *args)


class MemorySession:
    """One side of an in-memory link: a `PeerSession` over a real multiplexer."""

    def __init__(self, info: PeerInfo, handler: SessionHandler, pipe: _Pipe) -> None:
        self._info = info
        self._pipe = pipe
        self.mux = Multiplexer(self, handler, pipe, max_streams=16)
        self.other: MemorySession | None = None
        self.held_reading: set[object] = set()
        self.closed_at = 0.0  # when the link went down, on the nodes' test clocks

    @property
    def info(self) -> PeerInfo:
        return self._info

    @property
    def paused(self) -> bool:
        return self.mux.paused

    @property
    def closed(self) -> bool:
        return self.mux.closed

    def request(self, message: wire.ControlRequest) -> Deferred[wire.Message]:
        return self.mux.request(message)

    def store(self, message: wire.Store) -> BlobStream:
        return self.mux.store(message)

    def fetch(self, message: wire.Fetch, sink: FetchSink) -> Deferred[wire.Message]:
        return self.mux.fetch(message, sink)

    def when_writable(self) -> Deferred[None]:
        return self.mux.when_writable()

    def hold_reading(self, holder: object) -> None:
        self.held_reading.add(holder)

    def release_reading(self, holder: object) -> None:
        self.held_reading.discard(holder)

    def close(self, why: str = "closed", at: float = 0.0) -> None:
        """End both sides at time ``at``, as a lost connection does."""
        for side in (self, self.other):
            if side is not None and not side.mux.closed:
                side.closed_at = at
                side.mux.close(why)


class _Pipe:
    """mux.Output of one side: frames decoded and queued for the other side."""

    def __init__(self) -> None:
        self._decoder = wire.FrameDecoder()
        self.to: MemorySession | None = None

    def frame(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            _in_flight.append((self, frame))

    def data(self, header: bytes, payload: bytes | memoryview) -> None:
        self.frame(header + bytes(payload))


# Every frame sent on any link, in order. Frames arrive only when the test pumps:
# as on a real link, nothing comes in while the sender's code is still running.
_in_flight: deque[tuple[_Pipe, wire.Frame]] = deque()


def pump() -> None:
    """Deliver every frame in flight, and those they cause, until all is quiet."""
    while _in_flight:
        pipe, frame = _in_flight.popleft()
        assert pipe.to is not None
        if not pipe.to.mux.closed:
            pipe.to.mux.received(frame, wire.decode(frame))


class MemoryNode:
    """One org's node, its file logic only, over a store in ``root``."""

    def __init__(
        self,
        root: Path,
        org: str,
        *,
        owner: Owner | None = None,
        quota: int = 1 << 30,
        relay: bool = True,
        replicas: int | None = None,
        erasure: Erasure | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "private").mkdir(exist_ok=True)
        if owner is None:
            signer = Ed25519PrivateKey.generate()
            node_id = owner_id(signer.public_key().public_bytes_raw())
            owner = Owner(node_id, OrgKey.generate(), signer, X25519PrivateKey.generate())
        self.org = org
        self.owner = owner
        self.node_id = owner.node_id
        self.clock = Clock()
        self.sessions: list[MemorySession] = []
        disk = InlineDisk()
        store = BlobStore(root / "store")
        index = StoreIndex(
            store.root / "index.sqlite", disk.run, lambda rows: self.holdings.buried(rows)
        )
        self.holdings = Holdings(store, load_catalog(store, index), disk, index)
        self.ledger = Ledger(root / "private" / "ledger.sqlite", disk.run)
        self.space = SpaceAccount(
            self.holdings.catalog.sent_by, SpaceLimits(quota=quota, reserve=0), lambda: 1 << 40
        )
        # Every peer ever linked is known; one whose session closed was seen at the
        # clock's time when it left (the test's clock).
        self.placement = Placement(
            Redundancy(replicas, erasure), self.known, clock=self.clock.seconds
        )
        self.sync = Sync(
            self.owner, self.holdings, self.live, relay, self.placement, self.clock.seconds
        )
        # Every node ever linked has been met (and `also_met`, for a test's own).
        self.also_met: set[str] = set()
        met = lambda: set(self.known()) | self.also_met  # noqa: E731
        self.horizons = Horizons(self.holdings, met)
        self.collector = Collector(
            self.owner,
            self.holdings,
            self.ledger,
            self.horizons,
            self.live,
            met,
            collect_after=0,
            clock=lambda: 1e10,  # after every version made here: age does not count
        )
        self.sync.before_namespace = self.horizons.exchange
        self.sync.listed = self.collector.listed
        self.server = Server(
            self.node_id,
            self.holdings,
            self.space,
            KnownOrgs(root / "private" / "known.json"),
            self.sync,
            self.horizons,
        )
        self.fetcher = Fetcher(self.holdings, self.live, self.clock)
        self.auditor = Auditor(
            self.owner, self.holdings, self.live, lambda s, k: None, self.placement
        )
        self.recovery = Recovery(
            self.owner, self.holdings, self.ledger, self.live, self.fetcher, self.sync, self.auditor
        )

    def live(self) -> Sequence[PeerSession]:
        return [s for s in self.sessions if not s.closed]

    def known(self) -> dict[str, float | None]:
        known: dict[str, float | None] = {}
        for s in self.sessions:
            if s.closed:
                known.setdefault(s.info.node_id, s.closed_at)
            else:
                known[s.info.node_id] = None
        return known

    def put(self, name: str, data: bytes) -> Deferred[PutResult]:
        """Put ``data`` as ``name`` to this node and the linked peers placement chooses."""
        sessions, shares = recipients(self.placement, self.owner.key_for(name).blob, self.live())
        upload = Upload(
            self.owner,
            self.holdings,
            self.ledger,
            self.auditor,
            sessions,
            name,
            len(data),
            None,
            lambda _: None,
            self.placement,
            shares,
        )
        upload.write(data)
        return upload.finish()

    def close(self) -> None:
        self.ledger.close()
        self.holdings.index.closed(self.holdings.catalog)


def link(a: MemoryNode, b: MemoryNode) -> tuple[MemorySession, MemorySession]:
    """Connect two nodes: (a's session with b, b's session with a)."""
    a_pipe, b_pipe = _Pipe(), _Pipe()
    # As HELLO says it: whether each org places its files (and is not relayed).
    info_b = PeerInfo(b.node_id, b.org, "b:1", "b:1", placed=not b.placement.everywhere)
    info_a = PeerInfo(a.node_id, a.org, "a:1", "a:1", placed=not a.placement.everywhere)
    at_a = MemorySession(info_b, a.server, a_pipe)
    at_b = MemorySession(info_a, b.server, b_pipe)
    a_pipe.to, b_pipe.to = at_b, at_a
    at_a.other, at_b.other = at_b, at_a
    a.sessions.append(at_a)
    b.sessions.append(at_b)
    return at_a, at_b


def outcome(d: Deferred[Any] | Coroutine[Any, Any, Any]) -> Any:
    """What ``d`` ends with once every frame in flight has arrived: its result or
    its Failure (AssertionError if it still waits, on a peer or a timer)."""
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    results: list[Any] = []
    d.addBoth(results.append)
    pump()
    assert results, "still waiting: on a peer that never answers, or on a timer"
    return results[0]


def settled(d: Deferred[Any] | Coroutine[Any, Any, Any]) -> Any:
    """The result of ``d`` once every frame in flight has arrived (a failure raised)."""
    result = outcome(d)
    if isinstance(result, Failure):
        result.raiseException()
    return result
