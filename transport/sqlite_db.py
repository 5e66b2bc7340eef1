"""A small async wrapper around one SQLite connection, used off the event loop.

SQLite calls block (commits fsync), so they run in a worker thread; a lock
serialises them because one connection is not safe for concurrent use.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class Database:
    """One SQLite file in WAL mode.

    `synchronous="FULL"` fsyncs every commit; "NORMAL" survives a killed
    process (the WAL is in the kernel's hands) but may lose the last commits
    on power loss — for callers whose rows can be rebuilt or are replicated.
    """

    def __init__(self, path: Path, schema: str, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self.conn.executescript(schema)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one transaction, in the calling thread."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self.conn)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            return out

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` inside one transaction, in a worker thread."""
        return await trio.to_thread.run_sync(self.run_sync, fn)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.conn.close()


def row_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """Rows of a cursor as dicts keyed by column name."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
