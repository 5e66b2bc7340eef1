"""The upload journal from outside the mount: what is still only on this machine, and damage.

`pluto status` and `pluto unmount` read the journal whether or not a mount
runs, read-only: they never create, migrate or lock it (SQLite's WAL lets
them read while the mount writes). The mount opens it through
`open_journal`, which refuses a damaged one before anything is lost:

- garbage bytes or a damaged database (sqlite3.DatabaseError, or a failed
  quick_check);
- an empty or missing journal while cache files with data exist: SQLite
  opens a 0-byte file as a new, empty database, and the mount would then
  drop every cache file as stale, pending ones included. A journal SQLite
  wrote is never 0 bytes (its first page is written when WAL mode is set).

Either way the refusal is one line: the data on the peers is safe, how many
local files may hold changes, and the recovery command (`pluto salvage`,
pluto_fs/writeback/salvage.py). A cache file is deleted only when a readable journal
says it is not pending.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pluto_fs.errors import PlutoError
from pluto_fs.home import Home
from pluto_fs.units import format_size
from pluto_fs.writeback.journal import Journal

JOURNAL_NAME = "journal.sqlite"
FILES_DIR = "files"


class JournalDamaged(PlutoError):
    """The upload journal cannot be trusted; `pluto salvage` keeps what it may have held."""


def journal_path(home: Home) -> Path:
    """Where the mount's journal lives (nothing is created)."""
    return home.path / "cache" / JOURNAL_NAME


def files_dir(home: Home) -> Path:
    """Where the mount's local copies live (nothing is created)."""
    return home.path / "cache" / FILES_DIR


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class LocalChanges:
    """What only this machine holds: files with data not uploaded, folders with changes not published."""

    files: int = 0
    bytes: int = 0
    folders: int = 0

    def empty(self) -> bool:
        """True when nothing is waiting."""
        return not (self.files or self.folders)

    def describe(self) -> str:
        """"3 files (12.0 MiB) and 2 folders" (the parts that are not zero)."""
        parts = []
        if self.files:
            parts.append(f"{_plural(self.files, 'file')} ({format_size(self.bytes)})")
        if self.folders:
            parts.append(_plural(self.folders, "folder"))
        return " and ".join(parts) or "nothing"

    def verb(self) -> str:
        """"is" or "are", to follow `describe()`."""
        return "is" if self.files + self.folders == 1 else "are"


def cache_files_with_data(home: Home) -> list[Path]:
    """Local copies holding at least one byte (which of them are pending only a journal can say)."""
    try:
        return sorted(f for f in files_dir(home).iterdir() if f.is_file() and f.stat().st_size > 0)
    except FileNotFoundError:
        return []


def _damaged(home: Home, what: str) -> JournalDamaged:
    held = cache_files_with_data(home)
    size = sum(f.stat().st_size for f in held)
    local = (f"{_plural(len(held), 'local file')} ({format_size(size)}) may hold changes not uploaded yet"
             if held else "no local file holds data")
    return JournalDamaged(
        f"the upload journal {journal_path(home)} {what}. What is on the peers is safe; {local}. "
        f"Run `pluto salvage --home {home.path}`: it keeps them under salvaged/ in that home and starts a "
        "fresh journal (docs/MOUNT.md, \"A damaged journal\")"
    )


def _is_damage(exc: sqlite3.Error) -> bool:
    # OperationalError (locked, disk full, cannot open) is a condition, not damage; the other
    # DatabaseErrors ("file is not a database", "database disk image is malformed") are.
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


def _empty_or_missing(home: Home) -> bool:
    path = journal_path(home)
    return not path.exists() or path.stat().st_size == 0


def read_local_changes(home: Home) -> LocalChanges:
    """What the journal says is only on this machine, read-only (JournalDamaged if it cannot say)."""
    path = journal_path(home)
    if _empty_or_missing(home):
        if cache_files_with_data(home):
            raise _damaged(home, "is empty or missing")
        return LocalChanges()
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise PlutoError(f"cannot read the upload journal {path}: {exc}") from None
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "dirs" in tables:  # format 1, not migrated yet (the next mount does it)
            folders = db.execute("SELECT COUNT(*) FROM dirs").fetchone()[0]
        else:
            folders = db.execute("SELECT COUNT(*) FROM folders WHERE dirty=1").fetchone()[0]
        rows = db.execute("SELECT cache_id, size FROM files").fetchall()
    except sqlite3.Error as exc:
        if _is_damage(exc):
            raise _damaged(home, f"is damaged ({exc})") from None
        raise PlutoError(f"cannot read the upload journal {path}: {exc}") from None
    finally:
        db.close()
    files = size = 0
    for cache_id, _recorded in rows:
        try:
            size += (files_dir(home) / str(cache_id)).stat().st_size  # the row keeps the size at the first write
        except (FileNotFoundError, ValueError):
            continue  # no local copy: nothing this machine could still upload
        files += 1
    return LocalChanges(files, size, folders)


def open_journal(home: Home) -> Journal:
    """The mount's journal, opened for writing; JournalDamaged (one line, with the recovery) if damaged."""
    path = home.cache / JOURNAL_NAME
    if _empty_or_missing(home) and cache_files_with_data(home):
        raise _damaged(home, "is empty or missing")
    try:
        journal = Journal(path)
    except sqlite3.Error as exc:
        if _is_damage(exc):
            raise _damaged(home, f"is damaged ({exc})") from None
        raise PlutoError(f"cannot open the upload journal {path}: {exc}") from None
    problem = journal.integrity_problem()
    if problem is not None:
        journal.close()
        raise _damaged(home, f"is damaged ({problem})")
    return journal
