"""SQLite as the node uses it: durable commits off the reactor, in groups.

A `Database` has a writer connection used only on the disk thread and a reader
connection used on the reactor thread (WAL mode lets them run side by side).
`GroupCommit` turns many small writes into few transactions: every write queued
while one transaction runs goes into the next, and each writer's Deferred fires
once its write is durable. Under load (many puts or deletions at once) that is one
fsync for many of them; alone, a write is committed at once.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

Item = TypeVar("Item")

# SQLite integers are signed 64-bit; versions are unsigned. Shifting keeps the order.
_SIGN = 1 << 63


def version_to_db(version: int) -> int:
    return version - _SIGN


def version_from_db(value: int) -> int:
    return value + _SIGN


class Database:
    def __init__(self, path: Path, schema: str) -> None:
        # Made 0600 before SQLite opens it: its -wal and -shm files take the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self.path = path
        self.writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.writer.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns (NORMAL may lose the last ones).
        self.writer.execute("PRAGMA synchronous=FULL")
        self.writer.executescript(schema)
        self.reader = sqlite3.connect(path, check_same_thread=False)

    def transaction(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """On the disk thread: run ``(sql, rows)`` pairs as one transaction."""
        with self.writer:
            self.writer.execute("BEGIN IMMEDIATE")
            for sql, rows in statements:
                self.writer.executemany(sql, rows)

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


class GroupCommit(Generic[Item]):
    """Queues items; writes each group with ``write(items)`` on the disk thread."""

    def __init__(
        self, run: Callable[..., Deferred[Any]], write: Callable[[list[Item]], None]
    ) -> None:
        """``run(f, *args)`` runs ``f`` on the disk thread, after what was queued before."""
        self._run = run
        self._write = write
        self._queue: list[tuple[Item, Deferred[None]]] = []
        self._committing = False
        self._idle: list[Deferred[None]] = []

    def add(self, item: Item) -> Deferred[None]:
        """Fires once ``item`` is durable (or fails with the write)."""
        done: Deferred[None] = Deferred()
        self._queue.append((item, done))
        if not self._committing:
            self._next()
        return done

    def idle(self) -> Deferred[None]:
        """Fires once every item added so far is written (or failed)."""
        done: Deferred[None] = Deferred()
        if self._committing:
            self._idle.append(done)
        else:
            done.callback(None)
        return done

    def _next(self) -> None:
        batch, self._queue = self._queue, []
        self._committing = True

        def finished(result: object) -> None:
            self._committing = False
            for _, done in batch:
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(None)
            if self._queue:
                self._next()
            else:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)

        self._run(self._write, [item for item, _ in batch]).addBoth(finished)
