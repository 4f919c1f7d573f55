"""The owner's ledger: the newest version of every file of this org, kept in private/.

Losing `store/` must not lose the knowledge of what this org last wrote: without
it, a node that lost its copies would believe whatever version its peers show it,
and a peer holding an older one (or claiming a newer one) could roll a file back or
hide it. The ledger records, for each of this org's blob ids, the newest version
written here, whether it is a deletion, the owner's proof of it (the blob's record
or the tombstone's signature), and the file's name, size and time (names stay in
private/). Reads and recovery accept no version older than the ledger's.

Written in group commits: through the ordered disk thread (database.GroupCommit), or
by a put right after its blob's commit, on that commit's thread (`recorder`), with
the rows of the puts whose commits ended meanwhile. Read from the reactor thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from .database import Database, GroupCommit, version_from_db, version_to_db

LEDGER_FILE = "ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    blob TEXT PRIMARY KEY,
    version INTEGER NOT NULL,  -- stored as a signed 64-bit value (database.version_to_db)
    deleted INTEGER NOT NULL,
    proof BLOB NOT NULL,
    name TEXT,
    size INTEGER,
    mtime INTEGER
) WITHOUT ROWID;
"""


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
    return LedgerEntry(
        blob, version_from_db(version), bool(deleted), bytes(proof), name, size, mtime
    )


class Ledger:
    """This org's newest versions, durable in ``private/ledger.sqlite``."""

    def __init__(self, path: Path, run: Callable[..., Deferred[Any]]) -> None:
        """``run(f, *args)`` runs ``f`` on the disk thread, in order."""
        self._db = Database(path, _SCHEMA)
        self._commits: GroupCommit[LedgerEntry] = GroupCommit(run, self._write)
        # Rows of `recorder`s waiting for a transaction, and the one writer at a time.
        self._waiting: list[LedgerEntry] = []
        self._waiting_lock = threading.Lock()
        self._writing = threading.Lock()
        # The newest version of every row, also kept in memory: every put asks.
        row = self._db.reader.execute("SELECT max(version) FROM files").fetchone()
        self.newest = 0 if row[0] is None else version_from_db(row[0])

    def close(self) -> None:
        self._db.close()

    def get(self, blob: str) -> LedgerEntry | None:
        row = self._db.reader.execute(
            "SELECT blob, version, deleted, proof, name, size, mtime FROM files WHERE blob = ?",
            (blob,),
        ).fetchone()
        return None if row is None else _entry(row)

    def live(self) -> list[LedgerEntry]:
        """Every file not deleted, by blob id."""
        rows = self._db.reader.execute(
            "SELECT blob, version, deleted, proof, name, size, mtime FROM files "
            "WHERE deleted = 0 ORDER BY blob"
        )
        return [_entry(row) for row in rows]

    def deletions(self, above: int, limit: int = -1) -> list[LedgerEntry]:
        """The deletions newer than ``above``, oldest first (at most ``limit``)."""
        rows = self._db.reader.execute(
            "SELECT blob, version, deleted, proof, name, size, mtime FROM files "
            "WHERE deleted = 1 AND version > ? ORDER BY version LIMIT ?",
            (version_to_db(min(above, (1 << 64) - 1)), limit),
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
        return self._commits.add(entry)

    def written(self) -> Deferred[None]:
        """Fires once every entry recorded so far is written."""
        return self._commits.idle()

    def recorder(self, entry: LedgerEntry) -> Callable[[], None]:
        """For a put: ``entry`` is counted now (`newest`), and written by the function
        returned, to be called on a disk thread once the blob is durable. It returns
        once the row is durable too (or raises), written in one transaction with the
        rows of every other caller waiting at that moment: a group commit without a
        trip through the reactor. A row is written unless a newer version of its
        blob is recorded (a deletion that won keeps its row)."""
        self.newest = max(self.newest, entry.version)

        def record() -> None:
            with self._waiting_lock:
                self._waiting.append(entry)
            with self._writing:
                with self._waiting_lock:
                    if all(e is not entry for e in self._waiting):
                        return  # written with the group of a caller before this one
                    group, self._waiting = self._waiting, []
                try:
                    self._transaction(group)
                except BaseException:
                    # The others of the group write them again (and fail on their own).
                    with self._waiting_lock:
                        self._waiting[:0] = [e for e in group if e is not entry]
                    raise

        return record

    def _write(self, entries: list[LedgerEntry]) -> None:
        """On the disk thread: one transaction for the whole group."""
        with self._writing:
            self._transaction(entries)

    def _transaction(self, entries: list[LedgerEntry]) -> None:
        self._db.transaction(
            [
                (
                    "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (blob) DO UPDATE "
                    "SET version = excluded.version, deleted = excluded.deleted, "
                    "proof = excluded.proof, name = excluded.name, size = excluded.size, "
                    "mtime = excluded.mtime WHERE excluded.version > files.version",
                    [
                        (
                            e.blob,
                            version_to_db(e.version),
                            int(e.deleted),
                            e.proof,
                            e.name,
                            e.size,
                            e.mtime,
                        )
                        for e in entries
                    ],
                )
            ]
        )
