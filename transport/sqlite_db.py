"""The transport layer's one SQLite helper: one connection, one lock, used off the event loop.

Contract (the storage peer's index and the coordinator both follow it):

- One `Database` owns one connection in autocommit mode (`isolation_level=None`)
  and one `threading.Lock`. Every use of the connection holds that lock: a
  connection is not safe for concurrent use from several threads.
- Writes, and reads that must see one consistent state across several
  statements, go through `run` (from trio: a worker thread, because SQLite
  calls block and commits fsync) or `run_sync` (from a thread that may
  block). Both run `fn(conn)` inside `BEGIN IMMEDIATE ... COMMIT`, roll back
  if `fn` raises, and re-raise. `fn` must not call back into the Database.
- Short reads from a thread that may block use `with db.reading() as conn:`
  — the lock only, no transaction: each statement sees the latest commit.
- Nothing else touches the connection; there is no public `conn`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

T = TypeVar("T")


class Database:
    """One SQLite file in WAL mode.

    `synchronous="FULL"` fsyncs every commit; "NORMAL" survives a killed
    process (the WAL is in the kernel's hands) but may lose the last commits
    on power loss — for callers whose rows can be rebuilt or are replicated.
    """

    def __init__(self, path: Path, schema: str, synchronous: Literal["FULL", "NORMAL"] = "FULL") -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conn.executescript(schema)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one transaction, in the calling thread."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return out

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one transaction, in a worker thread."""
        return await trio.to_thread.run_sync(self.run_sync, fn)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, outside any transaction: for short reads in the calling thread."""
        with self._lock:
            yield self._conn

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def row_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """Rows of a cursor as dicts keyed by column name."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
