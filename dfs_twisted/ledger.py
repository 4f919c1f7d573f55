"""The owner's ledger: the newest version of every file of this org, kept in private/.

Losing `store/` must not lose the knowledge of what this org last wrote: without
it, a node that lost its copies would believe whatever version its peers show it,
and a peer holding an older one (or claiming a newer one) could roll a file back or
hide it. The ledger records, for each of this org's blob ids, the newest version
written here, whether it is a deletion, the owner's proof of it (the blob's record
or the tombstone's signature), and the file's name, size and time (names stay in
private/). Reads and recovery accept no version older than the ledger's.

SQLite in WAL mode: writes run on the disk thread and are committed in groups (every
write queued while a commit runs goes into the next one), and each writer's Deferred
fires once its row is durable. Reads come from the reactor thread on their own
connection.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

LEDGER_FILE = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    blob TEXT PRIMARY KEY,
    version INTEGER NOT NULL,  -- stored as a signed 64-bit value (see _to_db)
    deleted INTEGER NOT NULL,
    proof BLOB NOT NULL,
    name TEXT,
    size INTEGER,
    mtime INTEGER
) WITHOUT ROWID;
"""

_SIGN = 1 << 63


def _to_db(version: int) -> int:
    # SQLite integers are signed 64-bit; versions are unsigned. Shifting keeps the order.
    return version - _SIGN


def _from_db(value: int) -> int:
    return value + _SIGN


@dataclass(frozen=True)
class LedgerEntry:
    blob: str
    version: int
    deleted: bool
    proof: bytes  # crypto.BlobRecord bytes, or a tombstone's signature
    name: str | None = None  # None for a deletion recovered from a peer's tombstone
    size: int | None = None
    mtime: int | None = None


def _entry(row: tuple[Any, ...]) -> LedgerEntry:
    blob, version, deleted, proof, name, size, mtime = row
    return LedgerEntry(blob, _from_db(version), bool(deleted), bytes(proof), name, size, mtime)


class Ledger:
    """This org's newest versions, durable in ``private/ledger.sqlite``."""

    def __init__(self, path: Path, run: Callable[..., Deferred[Any]]) -> None:
        """``run(f, *args)`` runs ``f`` on the disk thread, in order."""
        self._run = run
        # Made 0600 before SQLite opens it: its -wal and -shm files take the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._writer.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns (NORMAL may lose the last ones).
        self._writer.execute("PRAGMA synchronous=FULL")
        self._writer.executescript(_SCHEMA)
        self._reader = sqlite3.connect(path, check_same_thread=False)
        self._queue: list[tuple[LedgerEntry, Deferred[None]]] = []
        self._committing = False
        # The newest version of every row, also kept in memory: every put asks.
        row = self._reader.execute("SELECT max(version) FROM files").fetchone()
        self.newest = 0 if row[0] is None else _from_db(row[0])

    def close(self) -> None:
        self._writer.close()
        self._reader.close()

    def get(self, blob: str) -> LedgerEntry | None:
        row = self._reader.execute(
            "SELECT blob, version, deleted, proof, name, size, mtime FROM files WHERE blob = ?",
            (blob,),
        ).fetchone()
        return None if row is None else _entry(row)

    def live(self) -> list[LedgerEntry]:
        """Every file not deleted, by blob id."""
        rows = self._reader.execute(
            "SELECT blob, version, deleted, proof, name, size, mtime FROM files "
            "WHERE deleted = 0 ORDER BY blob"
        )
        return [_entry(row) for row in rows]

    def seed(self, entries: list[LedgerEntry]) -> None:
        """Write at start-up, before the disk thread runs (versions found in the store
        that the ledger lacks: a node older than the ledger, or a ledger restored
        from an old backup)."""
        if entries:
            self._write(entries)
            self.newest = max(self.newest, *(e.version for e in entries))

    def record(self, entry: LedgerEntry) -> Deferred[None]:
        """Write ``entry`` unless a newer version of its blob is recorded; fires once
        durable."""
        self.newest = max(self.newest, entry.version)
        done: Deferred[None] = Deferred()
        self._queue.append((entry, done))
        if not self._committing:
            self._commit_queued()
        return done

    def _commit_queued(self) -> None:
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
                self._commit_queued()

        self._run(self._write, [entry for entry, _ in batch]).addBoth(finished)

    def _write(self, entries: list[LedgerEntry]) -> None:
        """On the disk thread: one transaction for the whole group."""
        with self._writer:
            self._writer.execute("BEGIN IMMEDIATE")
            self._writer.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (blob) DO UPDATE "
                "SET version = excluded.version, deleted = excluded.deleted, "
                "proof = excluded.proof, name = excluded.name, size = excluded.size, "
                "mtime = excluded.mtime WHERE excluded.version > files.version",
                [
                    (
                        e.blob,
                        _to_db(e.version),
                        int(e.deleted),
                        e.proof,
                        e.name,
                        e.size,
                        e.mtime,
                    )
                    for e in entries
                ],
            )
