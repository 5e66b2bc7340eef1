"""The mount's write-back journal (SQLite in the home's cache directory).

What is written through the mount lands here and in local cache files first;
the network catches up in the background. The journal records what has not
reached the network yet:

    folders  one row per changed directory (keyed by its slot key): its write
             cap, the sequence number of its last published version, its own
             attributes, whether it was never published, and `dirty` (it
             holds changes the network does not have)
    entries  one row per name in such a directory (the entry as the mount
             would publish it, plus the local cache file it waits on)
    files    file data waiting in a local cache file (by cache id)

A change costs one entry row and the folder's own row, whatever the size of
the folder: the first change of a folder in a session writes all its
entries, later ones only the entry that changed. A folder published exactly
as journaled is marked clean rather than deleted, so its entry rows stay a
faithful copy while the mount runs and the next change is again one row;
clean rows are thrown away when the journal is opened (the network holds
them, and may hold newer versions by then).

Each operation of the mount is one transaction (WAL, synchronous=NORMAL),
committed before the operation returns: a killed process loses nothing the
kernel has, which is what `kill -9` tests, and a crash never leaves half an
operation (a rename's removal without its insertion). `sync()` makes it all
durable against power loss before an fsync(2) is acknowledged. After a
crash, `pluto mount` reads the dirty folders back and resumes: directories
are republished, cache files uploaded.

Format 1 (one row per directory holding its whole state as one CBOR blob)
is migrated to this format on open, in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import cbor2

from pluto_fs.errors import HomeError

FORMAT = 3  # PRAGMA user_version of the current layout; format 1 had user_version 0, 2 rows without versions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (writer BLOB PRIMARY KEY, cap TEXT NOT NULL, seq INTEGER NOT NULL,
                                    attrs BLOB NOT NULL, new INTEGER NOT NULL, dirty INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (writer BLOB NOT NULL, name TEXT NOT NULL, entry BLOB NOT NULL,
                                    PRIMARY KEY (writer, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (cache_id TEXT PRIMARY KEY, size INTEGER NOT NULL);
"""


class Journal:
    """Durable record of unpublished directory states and pending file data."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Reentrant: a transaction holds it from BEGIN to COMMIT so that `sync()` (run in a
        # worker thread) never checkpoints half of one, while its statements take it again.
        self._lock = threading.RLock()
        self._depth = 0
        # Bumped by every rollback: whoever caches "these rows are already written" compares it.
        self.generation = 0
        self._doomed = False  # a block inside the current transaction failed: roll it all back
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._open_format()
            # Clean rows only mirrored published folders for the session that wrote them.
            with self.transaction():
                self.db.execute("DELETE FROM entries WHERE writer IN (SELECT writer FROM folders WHERE dirty=0)")
                self.db.execute("DELETE FROM folders WHERE dirty=0")
        except BaseException:
            self.db.close()
            raise

    # ---- format ---------------------------------------------------------------------

    def _open_format(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > FORMAT:
            raise HomeError(
                f"{self.path} was written by a newer pluto (journal format {version}, this one reads up to "
                f"{FORMAT}): mount with that version or newer (deleting the file loses changes not yet uploaded)"
            )
        with self.transaction():
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            if version < FORMAT and "dirs" in tables:
                self._migrate_from_1()
            self.db.execute(f"PRAGMA user_version={FORMAT}")

    def _migrate_from_1(self) -> None:
        """Split format 1's whole-directory blobs into folder and entry rows (same entry layout)."""
        for writer, cap, seq, state in self.db.execute("SELECT writer, cap, seq, state FROM dirs").fetchall():
            try:
                layout, own, rows, new = cbor2.loads(state)
                if layout != 1:
                    raise ValueError(f"directory state layout {layout}")
                names = [row[1] for row in rows]
            except (ValueError, TypeError, IndexError, cbor2.CBORDecodeError) as exc:
                raise HomeError(
                    f"{self.path}: cannot read a directory saved by an older pluto ({exc}); mount with the pluto "
                    "that wrote it to upload pending changes, then delete the file"
                ) from None
            self.db.execute("INSERT OR REPLACE INTO folders(writer, cap, seq, attrs, new, dirty) VALUES (?,?,?,?,?,1)",
                            (writer, cap, seq, cbor2.dumps(own), int(bool(new))))
            self.db.executemany("INSERT OR REPLACE INTO entries(writer, name, entry) VALUES (?,?,?)",
                                [(writer, name, cbor2.dumps(row)) for name, row in zip(names, rows, strict=True)])
        self.db.execute("DROP TABLE dirs")

    # ---- transactions -----------------------------------------------------------------

    def transaction(self) -> _Transaction:
        """Group the writes inside a `with` block into one atomic commit (nested blocks join the outer one).

        Rolled back if the block raises, so a failed operation leaves no half
        of itself behind; `generation` then changes.
        """
        return _Transaction(self)

    # ---- directories --------------------------------------------------------------------

    def put_folder(self, writer: bytes, cap: str, seq: int, attrs: bytes, new: bool) -> None:
        """Record a directory's own state and that it holds unpublished changes."""
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO folders(writer, cap, seq, attrs, new, dirty) VALUES (?,?,?,?,?,1)",
                            (writer, cap, seq, attrs, int(new)))

    def put_entry(self, writer: bytes, name: str, entry: bytes) -> None:
        """Record the current state of one entry of a directory."""
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO entries(writer, name, entry) VALUES (?,?,?)",
                            (writer, name, entry))

    def drop_entry(self, writer: bytes, name: str) -> None:
        """A name left a directory."""
        with self._lock:
            self.db.execute("DELETE FROM entries WHERE writer=? AND name=?", (writer, name))

    def replace_entries(self, writer: bytes, entries: Iterable[tuple[str, bytes]]) -> None:
        """Record all entries of a directory, replacing whatever rows it had."""
        with self.transaction():
            self.db.execute("DELETE FROM entries WHERE writer=?", (writer,))
            self.db.executemany("INSERT INTO entries(writer, name, entry) VALUES (?,?,?)",
                                ((writer, name, entry) for name, entry in entries))

    def folder_published(self, writer: bytes, seq: int, clean: bool) -> None:
        """A version of the directory reached the network; `clean`: exactly the journaled state."""
        with self._lock:
            self.db.execute("UPDATE folders SET seq=?, new=0, dirty=? WHERE writer=?", (seq, int(not clean), writer))

    def drop_folder(self, writer: bytes) -> None:
        """Forget a directory altogether (removed: nothing links it any more)."""
        with self.transaction():
            self.db.execute("DELETE FROM entries WHERE writer=?", (writer,))
            self.db.execute("DELETE FROM folders WHERE writer=?", (writer,))

    def folders(self) -> list[tuple[bytes, str, int, bytes, bool]]:
        """Directories with unpublished changes: (writer, cap, seq, own attributes, never published)."""
        with self._lock:
            return [(bytes(w), c, s, bytes(a), bool(n))
                    for w, c, s, a, n in self.db.execute("SELECT writer, cap, seq, attrs, new FROM folders "
                                                         "WHERE dirty=1")]

    def entries(self, writer: bytes) -> list[bytes]:
        """The journaled entries of one directory."""
        with self._lock:
            return [bytes(e) for (e,) in self.db.execute("SELECT entry FROM entries WHERE writer=?", (writer,))]

    # ---- file data ------------------------------------------------------------------------

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

    def integrity_problem(self) -> str | None:
        """None if SQLite's quick_check finds the database sound, else its first complaint."""
        with self._lock:
            try:
                rows = self.db.execute("PRAGMA quick_check").fetchall()
            except sqlite3.DatabaseError as exc:
                return str(exc)
        return None if rows == [("ok",)] else str(rows[0][0])

    def sync(self) -> None:
        """Make every row so far durable against power loss too (checkpoint + fsync)."""
        with self._lock:
            self.db.execute("PRAGMA wal_checkpoint(FULL)")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self.db.close()


class _Transaction:
    """The context manager behind `Journal.transaction` (a class: cheaper than a generator, and this
    runs several times per file operation)."""

    __slots__ = ("journal",)

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def __enter__(self) -> None:
        j = self.journal
        j._lock.acquire()
        try:
            if j._depth == 0:
                j.db.execute("BEGIN")
        except BaseException:
            j._lock.release()
            raise
        j._depth += 1

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        j = self.journal
        try:
            j._depth -= 1
            if kind is not None:
                j._doomed = True  # even if an outer block catches it, this transaction is not whole
            if j._depth == 0:
                doomed, j._doomed = j._doomed, False
                if not doomed:
                    try:
                        j.db.execute("COMMIT")
                        return
                    except BaseException:
                        j.generation += 1
                        if j.db.in_transaction:
                            j.db.execute("ROLLBACK")
                        raise
                j.generation += 1
                j.db.execute("ROLLBACK")
                if kind is None:
                    raise sqlite3.OperationalError("journal transaction rolled back: a nested write failed")
        finally:
            j._lock.release()
