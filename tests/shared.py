"""One expensive fixture (a network of node processes) shared by the tests of a class."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Protocol

from dfs_twisted.launcher import NodeProcess, free_port, start_network


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
    """The seed's three nodes (A; B dials A; C dials A and B) for one test, in a temp dir.

    Returns (root, a, b, c); the nodes are stopped and the directory removed at cleanup.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    test.addCleanup(shutil.rmtree, root, True)
    a, b, c = free_port(), free_port(), free_port()
    nodes = start_network(root / "nodes", [(a, []), (b, [a]), (c, [a, b])])
    for node in nodes:
        test.addCleanup(node.stop)
    return root, nodes[0], nodes[1], nodes[2]
