"""A local log of every pack this user uploaded (HOME/packs.sqlite).

Garbage collection needs to know which packs exist in order to find the
ones no file refers to any more; the tree only tells which packs are *used*.
Losing this log leaks space on peers (unreferenced packs are never deleted)
but never loses data.

A row that cannot be written (the local disk is full: sqlite3.OperationalError)
is kept in memory and written with the next one, or at close; the upload it
records has succeeded, so it must not fail because of the log. Before, the
error escaped into the volume's nursery and ended the mount.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS packs (writer BLOB PRIMARY KEY, nonce BLOB NOT NULL, read_key BLOB NOT NULL, created REAL NOT NULL);"


class PackLog:
    """Append-mostly record of uploaded packs."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._unwritten: list[tuple[bytes, bytes, bytes, float]] = []  # rows the disk did not take yet
        self.db = sqlite3.connect(Path(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(_SCHEMA)

    def add(self, writer: bytes, nonce: bytes, read_key: bytes) -> None:
        """Record an uploaded pack (kept in memory until the disk takes it: never raises for a full disk)."""
        with self._lock:
            self._unwritten.append((writer, nonce, read_key, time.time()))
            self._write_unwritten()

    def _write_unwritten(self) -> None:
        try:
            self.db.executemany("INSERT OR IGNORE INTO packs VALUES (?,?,?,?)", self._unwritten)
        except sqlite3.OperationalError as exc:
            if len(self._unwritten) == 1:  # once per run of failures, not per pack
                log.warning("could not record an uploaded pack in the local pack log (%s); kept in memory "
                            "and written once the disk takes it (only garbage collection needs it)", exc)
            return
        self._unwritten.clear()

    def all(self) -> list[tuple[bytes, bytes, bytes, float]]:
        """(writer, nonce, read key, created) of every pack logged."""
        with self._lock:
            stored = [(bytes(w), bytes(n), bytes(k), c) for w, n, k, c in self.db.execute("SELECT * FROM packs")]
            return stored + list(self._unwritten)

    def remove(self, writer: bytes) -> None:
        """Forget a pack that was deleted."""
        with self._lock:
            self.db.execute("DELETE FROM packs WHERE writer=?", (writer,))

    def close(self) -> None:
        """Write what is still in memory if the disk takes it now, then close the database."""
        with self._lock:
            if self._unwritten:
                self._write_unwritten()
                if self._unwritten:
                    log.warning("%d uploaded packs are not in the local pack log (the disk is full): garbage "
                                "collection will not know them; their data is safe", len(self._unwritten))
            self.db.close()
