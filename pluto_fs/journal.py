"""The mount's write-back journal (SQLite in the home's cache directory).

What is written through the mount lands here and in local cache files first;
the network catches up in the background. The journal records exactly what
has not reached the network yet:

    dirs     the latest unpublished state of each changed directory
             (keyed by the directory's slot key; holds its write cap)
    files    file data waiting in a local cache file (by cache id)

Rows are written on every change (WAL, synchronous=NORMAL: a killed process
loses nothing the kernel has, which is what `kill -9` tests), and fsync'd
by `sync()` before an fsync(2) is acknowledged. After a crash, `pluto mount`
reads the rows back and resumes: directories are republished, cache files
uploaded. A row goes away only once its content is durable on peers.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dirs (writer BLOB PRIMARY KEY, cap TEXT NOT NULL, seq INTEGER NOT NULL,
                                 state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS files (cache_id TEXT PRIMARY KEY, size INTEGER NOT NULL);
"""


class Journal:
    """Durable record of unpublished directory states and pending file data."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def put_dir(self, writer: bytes, cap: str, seq: int, state: bytes) -> None:
        """Record the newest unpublished state of a directory."""
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO dirs(writer, cap, seq, state) VALUES (?,?,?,?)",
                            (writer, cap, seq, state))

    def drop_dir(self, writer: bytes, state: bytes) -> None:
        """Forget a directory's row, if it still holds exactly `state` (i.e. it was published)."""
        with self._lock:
            self.db.execute("DELETE FROM dirs WHERE writer=? AND state=?", (writer, state))

    def dirs(self) -> list[tuple[bytes, str, int, bytes]]:
        """All unpublished directory states."""
        with self._lock:
            return [(bytes(w), c, s, bytes(st)) for w, c, s, st in self.db.execute("SELECT writer, cap, seq, state FROM dirs")]

    def put_file(self, cache_id: str, size: int) -> None:
        """Mark a cache file as holding data not yet on the network."""
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO files(cache_id, size) VALUES (?,?)", (cache_id, size))

    def drop_file(self, cache_id: str) -> None:
        """The cache file's data is on the network (or the file is gone)."""
        with self._lock:
            self.db.execute("DELETE FROM files WHERE cache_id=?", (cache_id,))

    def pending_files(self) -> dict[str, int]:
        """Cache ids with data not yet on the network, and their sizes."""
        with self._lock:
            return {c: s for c, s in self.db.execute("SELECT cache_id, size FROM files")}

    def sync(self) -> None:
        """Make every row so far durable against power loss too (checkpoint + fsync)."""
        with self._lock:
            self.db.execute("PRAGMA wal_checkpoint(FULL)")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self.db.close()
