"""One expensive fixture (a network of node processes) shared by the tests of a class."""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

from twisted.trial.unittest import SynchronousTestCase

from dfs_twisted.launcher import NodeProcess, free_port, start_network


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds (readiness, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Stoppable(Protocol):
    def stop(self) -> None: ...


class SharedFixture:
    """Mixin for a TestCase: ``self.shared()`` is made once per class, by ``make_shared``.

    pytest calls setUpClass/tearDownClass, trial does not: the first test makes the
    fixture and the last one of the class stops it (atexit covers a partial run).
    """

    _shared: ClassVar[Any] = None
    _pending: ClassVar[set[str] | None] = None
    _testMethodName: str

    @classmethod
    def make_shared(cls) -> Stoppable:
        raise NotImplementedError

    @classmethod
    def shared(cls) -> Any:
        if cls._shared is None:
            cls._shared = cls.make_shared()
            cls._pending = {name for name in dir(cls) if name.startswith("test_")}
            atexit.register(cls.stop_shared)
        return cls._shared

    @classmethod
    def stop_shared(cls) -> None:
        if cls._shared is not None:
            cls._shared.stop()
            cls._shared = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.shared()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.stop_shared()

    def _shared_done(self) -> None:
        """Called by the test case's cleanup: the last test of the class stops the fixture."""
        pending = type(self)._pending
        if pending is not None:
            pending.discard(self._testMethodName)
            if not pending:
                type(self).stop_shared()


def seed_network(test: Any, prefix: str) -> tuple[Path, NodeProcess, NodeProcess, NodeProcess]:
    """A SeedNetwork for one test: (root, a, b, c), stopped and removed at cleanup."""
    net = SeedNetwork(prefix)
    test.addCleanup(net.stop)
    return net.root, net.a, net.b, net.c


class SeedNetwork:
    """The seed's three nodes (A; B dials A; C dials A and B), shared by a test class."""

    def __init__(self, prefix: str = "dfs-net-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        a, b, c = free_port(), free_port(), free_port()
        try:
            self.a, self.b, self.c = start_network(self.root, [(a, []), (b, [a]), (c, [a, b])])
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def nodes(self) -> list[NodeProcess]:
        return [self.a, self.b, self.c]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def held(node: NodeProcess, owner: str) -> dict[str, bytes]:
    """Blob id -> ciphertext of ``owner``'s blobs in ``node``'s store."""
    root = node.data_dir / "store" / owner
    if not root.exists():
        return {}
    blobs = {}
    for path in root.glob("??/??/*"):
        try:
            blobs[path.name] = path.read_bytes()
        except FileNotFoundError:
            continue  # removed (a deletion landing) between the listing and the read
    return blobs


def tombstones(node: NodeProcess, owner: str) -> set[str]:
    """The blob ids of ``owner``'s deletions recorded in ``node``'s index."""
    db = sqlite3.connect(f"file:{node.data_dir / 'store' / 'index.sqlite'}?mode=ro", uri=True)
    with contextlib.closing(db):
        rows = db.execute("SELECT blob FROM entries WHERE owner = ? AND deleted = 1", (owner,))
        return {blob for (blob,) in rows}


class ConvergenceTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dfs-converge-"))
        self.addCleanup(shutil.rmtree, self.root, True)

    def node(self, name: str, port: int, peers: list[int], *extra: str) -> NodeProcess:
        node = NodeProcess(port, self.root / name, peers, org=name, extra=extra)
        self.addCleanup(node.stop)
        node.start().wait_ready()
        return node

    def put(self, node: NodeProcess, name: str, data: bytes) -> None:
        node.dfs("put", "-", "--name", name, input=data)

    def get(self, node: NodeProcess, name: str) -> bytes:
        return node.dfs("get", name).stdout

    def ls(self, node: NodeProcess) -> dict[str, int]:
        rows = json.loads(node.dfs("ls", "--json").stdout)
        return {row["name"]: row["replicas"] for row in rows}
