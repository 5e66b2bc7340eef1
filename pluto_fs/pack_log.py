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
# 1 while the pack's record leaves a fragment column without a peer (docs/DATA_PATH.md,
# "When a write counts as stored"): the mount places those columns, after a restart too.
_ADD_SHORT = "ALTER TABLE packs ADD COLUMN short INTEGER NOT NULL DEFAULT 0"


class PackLog:
    """Append-mostly record of uploaded packs."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self.db = sqlite3.connect(Path(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)
        if "short" not in {row[1] for row in self.db.execute("PRAGMA table_info(packs)")}:
            try:
                self.db.execute(_ADD_SHORT)  # a log written before short packs existed
            except sqlite3.OperationalError:
                pass  # another process (mount and `pluto check`) added it first

    def add(self, writer: bytes, nonce: bytes, read_key: bytes, short: bool = False) -> None:
        """Record an uploaded pack (`short`: some fragment column has no peer yet)."""
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO packs(writer, nonce, read_key, created, short) VALUES (?,?,?,?,?)",
                            (writer, nonce, read_key, time.time(), int(short)))

    def set_short(self, writer: bytes, short: bool) -> None:
        """Note whether a logged pack still has a fragment column without a peer (no-op if not logged)."""
        with self._lock:
            self.db.execute("UPDATE packs SET short=? WHERE writer=?", (int(short), writer))

    def short(self) -> list[tuple[bytes, bytes, bytes]]:
        """(writer, nonce, read key) of every logged pack with a fragment column without a peer."""
        with self._lock:
            rows = self.db.execute("SELECT writer, nonce, read_key FROM packs WHERE short != 0").fetchall()
        return [(bytes(w), bytes(n), bytes(k)) for w, n, k in rows]

    def has(self, writer: bytes) -> bool:
        """Whether a pack is logged (garbage collection removes collected ones)."""
        with self._lock:
            return self.db.execute("SELECT 1 FROM packs WHERE writer=?", (writer,)).fetchone() is not None

    def all(self) -> list[tuple[bytes, bytes, bytes, float]]:
        """(writer, nonce, read key, created) of every pack logged."""
        with self._lock:
            rows = self.db.execute("SELECT writer, nonce, read_key, created FROM packs").fetchall()
        return [(bytes(w), bytes(n), bytes(k), c) for w, n, k, c in rows]

    def remove(self, writer: bytes) -> None:
        """Forget a pack that was deleted."""
        with self._lock:
            self.db.execute("DELETE FROM packs WHERE writer=?", (writer,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self.db.close()
