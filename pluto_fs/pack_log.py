"""A local log of every pack this user uploaded (HOME/packs.sqlite).

Garbage collection needs to know which packs exist in order to find the
ones no file refers to any more; the tree only tells which packs are *used*.
Losing this log leaks space on peers (unreferenced packs are never deleted)
but never loses data.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = "CREATE TABLE IF NOT EXISTS packs (writer BLOB PRIMARY KEY, nonce BLOB NOT NULL, read_key BLOB NOT NULL, created REAL NOT NULL);"


class PackLog:
    """Append-mostly record of uploaded packs."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self.db = sqlite3.connect(Path(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)

    def add(self, writer: bytes, nonce: bytes, read_key: bytes) -> None:
        """Record an uploaded pack."""
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO packs VALUES (?,?,?,?)", (writer, nonce, read_key, time.time()))

    def all(self) -> list[tuple[bytes, bytes, bytes, float]]:
        """(writer, nonce, read key, created) of every pack logged."""
        with self._lock:
            return [(bytes(w), bytes(n), bytes(k), c) for w, n, k, c in self.db.execute("SELECT * FROM packs")]

    def remove(self, writer: bytes) -> None:
        """Forget a pack that was deleted."""
        with self._lock:
            self.db.execute("DELETE FROM packs WHERE writer=?", (writer,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self.db.close()
