"""Real nodes in this process, over loopback TLS: start, wait for sessions, tear down.

Shared by the in-process node and API tests. Every node gets a temp data dir and a
free port; cleanup stops it and waits until its sockets are really gone, so trial's
reactor check stays clean.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from twisted.internet import reactor as _reactor
from twisted.internet import task, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IConsumer
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer, provider

from dfs_twisted.launcher import free_port
from dfs_twisted.node import NodeService
from dfs_twisted.options import PeerAddress
from dfs_twisted.protocol import PeerProtocol
from dfs_twisted.space import SpaceLimits
from dfs_twisted.store import BlobKey

# The module is the running reactor: typed as what it is.
reactor = cast(PosixReactorBase, _reactor)
_Raw = TypeVar("_Raw", bound="RawHttp")

POLL = 0.01  # seconds between checks of a condition
PATIENCE = 10.0  # seconds before a condition that never comes true fails the test


async def eventually(condition: Callable[[], bool], what: str, patience: float = PATIENCE) -> None:
    """Wait (polling the reactor) until ``condition()`` holds; fail after ``patience``."""
    for _ in range(int(patience / POLL)):
        if condition():
            return
        await task.deferLater(reactor, POLL, lambda: None)
    if not condition():
        raise AssertionError(f"timed out waiting for {what}")


def _sockets() -> set[object]:
    """The reactor's TCP ports and connections (not its own wakers)."""
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return {s for s in selectables if isinstance(s, tcp.Connection | tcp.Port)}


class NodeTestCase(TestCase):
    """A TestCase that starts real nodes and tears all of them down afterwards."""

    timeout = 60

    def setUp(self) -> None:
        self._baseline = _sockets()
        self._nodes: list[NodeService] = []
        # Registered first, so it runs last: after every node stopped.
        self.addCleanup(self._await_quiet)

    def make_node(
        self,
        port: int | None = None,
        peers: Iterable[int] = (),
        org: str | None = None,
        pins: dict[str, str] | None = None,
        data_dir: Path | None = None,
        relay: bool = True,
        space: SpaceLimits | None = None,
    ) -> NodeService:
        """A started node on ``port`` dialling ``peers`` (ports on 127.0.0.1)."""
        data_dir = data_dir or Path(self.mktemp())
        if pins is not None:
            # Written before the node loads its pins, as if left from an earlier run.
            private = data_dir / "private"
            private.mkdir(parents=True, mode=0o700)
            (private / "known_peers.json").write_text(json.dumps(pins))
            (private / "known_peers.json").chmod(0o600)
        node = NodeService(
            port=port if port is not None else free_port(),
            data_dir=data_dir,
            peers=[PeerAddress("127.0.0.1", p) for p in peers],
            api="tcp:0:interface=127.0.0.1",
            org=org,
            relay=relay,
            space=space,
        )
        node.startService()
        self._nodes.append(node)
        self.addCleanup(self._stop, node)
        return node

    async def _stop(self, node: NodeService) -> None:
        if node.running:
            await node.stopService()
        self._nodes.remove(node)

    async def _await_quiet(self) -> None:
        await eventually(lambda: _sockets() <= self._baseline, "connections to close")

    async def start(self, *nodes: NodeService) -> None:
        for node in nodes:
            await node.ready

    async def connected(self, *nodes: NodeService) -> None:
        """Wait until every node has a live session with every other one."""
        ids = {n.node_id for n in nodes}

        def all_connected() -> bool:
            return all(
                {s.info.node_id for s in n.registry.live() if s.info is not None}
                >= ids - {n.node_id}
                for n in nodes
            )

        await self.start(*nodes)
        await eventually(all_connected, "sessions between all nodes")

    async def liar_then_honest(
        self, name: str, data: bytes
    ) -> tuple[NodeService, NodeService, NodeService, str]:
        """V dials L first (so L is asked first), then H dials V; all hold V's file
        ``name``. Returns V, L, H and the file's blob id (L for a test to make lie)."""
        l_port = free_port()
        liar_node = self.make_node(l_port, org="liar")
        victim = self.make_node(peers=[l_port], org="victim")
        await self.connected(victim, liar_node)
        honest = self.make_node(peers=[victim.port], org="honest")
        await self.connected(victim, honest)
        blob, replicas = await put(victim, name, data)
        self.assertEqual(replicas, 3)
        return victim, liar_node, honest, blob

    @staticmethod
    def session(node: NodeService, to: NodeService) -> PeerProtocol:
        """``node``'s live session with ``to``."""
        for s in node.registry.live():
            if s.info is not None and s.info.node_id == to.node_id:
                return s
        raise AssertionError(f"{node.org} has no session with {to.org}")


class RawHttp(Protocol):
    """A bare HTTP client connection to a node's API: what it received, and when it
    closed (requests are written on ``transport`` by the test)."""

    transport: Any  # a TCP connection (write, pauseProducing, abortConnection)

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(None)


async def connect_raw(port: int, client: _Raw) -> _Raw:
    """``client`` connected to the API listening on ``port`` of 127.0.0.1."""
    await connectProtocol(TCP4ClientEndpoint(_reactor, "127.0.0.1", port), client)
    return client


@implementer(IConsumer)
class BytesConsumer:
    """An IConsumer collecting bytes; it pulls from a non-streaming producer."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.producer: Any = None

    @property
    def value(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes | memoryview) -> None:
        self.chunks.append(bytes(data))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        if not streaming:
            reactor.callLater(0, self._pull)

    def unregisterProducer(self) -> None:
        self.producer = None

    def _pull(self) -> None:
        if self.producer is not None:
            self.producer.resumeProducing()
            reactor.callLater(0, self._pull)


def blob_path(node: NodeService, owner: str, blob: str) -> Path:
    return node.store.path_for(BlobKey(owner, blob))


async def put(node: NodeService, name: str, data: bytes) -> tuple[str, int]:
    """Store ``data`` as ``name`` through the node's files; return (blob, replicas)."""
    upload = node.files.begin_put(name, len(data), None)
    for start in range(0, len(data), 100_000):
        upload.write(data[start : start + 100_000])
    result = await upload.finish()
    return result.blob, result.replicas


async def get(node: NodeService, name: str) -> tuple[bytes, str]:
    """A file's bytes through the node's files, and where they came from."""
    download = await node.files.open_download(name)
    consumer: Any = BytesConsumer()  # an IConsumer, which mypy cannot see
    await download.stream_to(consumer)
    return consumer.value, download.source


def start_node(
    test: NodeTestCase, port: int, peers: list[int], org: str, **options: Any
) -> NodeService:
    """Like ``test.make_node``, with any other NodeService ``options`` (limits, admission)."""
    node = NodeService(
        port=port,
        data_dir=Path(test.mktemp()),
        peers=[PeerAddress("127.0.0.1", p) for p in peers],
        api="tcp:0:interface=127.0.0.1",
        org=org,
        **options,
    )
    node.startService()
    test._nodes.append(node)
    test.addCleanup(test._stop, node)
    return node


def logged(test: TestCase, needle: str) -> list[str]:
    """The lines this process logs from now on (its in-process nodes) that contain
    ``needle``."""
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        text = formatEvent(event)
        if needle in text:
            lines.append(text)

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines
