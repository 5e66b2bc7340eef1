"""A local log of every pack this user uploaded (HOME/packs.sqlite).

Garbage collection needs to know which packs exist in order to find the
ones no file refers to any more; the tree only tells which packs are *used*.
Losing this log leaks space on peers (unreferenced packs are never deleted)
but never loses data.

A row that cannot be written (the local disk is full: sqlite3.OperationalError)
is kept in memory and written with the next one, or at close; the upload it
records has succeeded, so it must not fail because of the log (an error
escaping into the volume's nursery would end the mount).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from transport.sqlite_db import Database

log = logging.getLogger(__name__)

_SCHEMA = ("CREATE TABLE IF NOT EXISTS packs (writer BLOB PRIMARY KEY, nonce BLOB NOT NULL, read_key BLOB NOT NULL, "
           "created REAL NOT NULL);")
# 1 while the pack's record leaves a fragment column without a peer (docs/DATA_PATH.md,
# "When a write counts as stored"): the mount places those columns, after a restart too.
_ADD_SHORT = "ALTER TABLE packs ADD COLUMN short INTEGER NOT NULL DEFAULT 0"

Row = tuple[bytes, bytes, bytes, float, int]  # writer, nonce, read key, created, short


class PackLog:
    """Append-mostly record of uploaded packs."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()  # guards `_unwritten` (the database has its own lock)
        self._unwritten: dict[bytes, Row] = {}  # rows the disk did not take yet, by writer
        # NORMAL: a lost row only leaks space on peers (see above), never data.
        self.db = Database(Path(path), _SCHEMA, synchronous="NORMAL")
        with self.db.reading() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(packs)")}
            if "short" not in columns:
                try:
                    conn.execute(_ADD_SHORT)  # a log written before short packs existed
                except sqlite3.OperationalError:
                    pass  # another process (mount and `pluto check`) added it first

    def add(self, writer: bytes, nonce: bytes, read_key: bytes, short: bool = False) -> None:
        """Record an uploaded pack (`short`: some fragment column has no peer yet). Kept in memory until
        the disk takes it: never raises for a full disk."""
        with self._lock:
            self._unwritten.setdefault(writer, (writer, nonce, read_key, time.time(), int(short)))
            self._write_unwritten()

    def _write_unwritten(self) -> None:
        rows = list(self._unwritten.values())
        try:
            self.db.run_sync(lambda conn: conn.executemany(
                "INSERT OR IGNORE INTO packs(writer, nonce, read_key, created, short) VALUES (?,?,?,?,?)", rows))
        except sqlite3.OperationalError as exc:
            if len(self._unwritten) == 1:  # once per run of failures, not per pack
                log.warning("could not record an uploaded pack in the local pack log (%s); kept in memory "
                            "and written once the disk takes it (only garbage collection needs it)", exc)
            return
        self._unwritten.clear()

    def set_short(self, writer: bytes, short: bool) -> None:
        """Note whether a logged pack still has a fragment column without a peer (no-op if not logged)."""
        with self._lock:
            row = self._unwritten.get(writer)
            if row is not None:
                self._unwritten[writer] = (*row[:4], int(short))
                return
            with self.db.reading() as conn:
                conn.execute("UPDATE packs SET short=? WHERE writer=?", (int(short), writer))

    def short(self) -> list[tuple[bytes, bytes, bytes]]:
        """(writer, nonce, read key) of every logged pack with a fragment column without a peer."""
        with self._lock, self.db.reading() as conn:
            rows = conn.execute("SELECT writer, nonce, read_key FROM packs WHERE short != 0").fetchall()
            pending = [(w, n, k) for w, n, k, _, short in self._unwritten.values() if short]
        return [(bytes(w), bytes(n), bytes(k)) for w, n, k in rows] + pending

    def has(self, writer: bytes) -> bool:
        """Whether a pack is logged (garbage collection removes collected ones)."""
        with self._lock:
            if writer in self._unwritten:
                return True
        with self.db.reading() as conn:
            return conn.execute("SELECT 1 FROM packs WHERE writer=?", (writer,)).fetchone() is not None

    def all(self) -> list[tuple[bytes, bytes, bytes, float]]:
        """(writer, nonce, read key, created) of every pack logged."""
        with self._lock, self.db.reading() as conn:
            rows = conn.execute("SELECT writer, nonce, read_key, created FROM packs").fetchall()
            stored = [(bytes(w), bytes(n), bytes(k), c) for w, n, k, c in rows]
            return stored + [row[:4] for row in self._unwritten.values()]

    def remove(self, writer: bytes) -> None:
        """Forget a pack that was deleted."""
        with self._lock:
            self._unwritten.pop(writer, None)
        with self.db.reading() as conn:
            conn.execute("DELETE FROM packs WHERE writer=?", (writer,))

    def close(self) -> None:
        """Write what is still in memory if the disk takes it now, then close the database."""
        with self._lock:
            if self._unwritten:
                self._write_unwritten()
                if self._unwritten:
                    log.warning("%d uploaded packs are not in the local pack log (the disk is full): garbage "
                                "collection will not know them; their data is safe", len(self._unwritten))
            self.db.close()
