"""`pluto salvage`: keep what a damaged upload journal may have held, then start a fresh journal.

The mount refuses a damaged journal (pluto_fs/writeback/journal_state.py) because the
journal is the only record of which local cache files hold changes the
network does not have. Salvage keeps every one of them; nothing is deleted:

1. take the home lock (never while a mount runs);
2. read what the damaged journal can still tell, read-only: which cache
   files are pending, and under which path (a folder's journaled entries
   name its child folders, so a path is known up to the first folder the
   journal has no row for);
3. move every cache file to HOME/salvaged/<time>/: pending ones under their
   path when it is known, the others under by-cache-id/<id>; then fsync
   the folders it created. A crash here leaves some files moved and the
   journal still damaged, so the mount still refuses and running salvage
   again moves the rest;
4. set the damaged journal aside (journal.sqlite.damaged-<time>, with its
   -wal and -shm, so SQLite can still open it for anyone who wants to look);
5. create a fresh, empty journal.

What is on the peers was never at risk: `pluto mount` shows it as it was
last published. Copy back from salvaged/ what you need.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from cryptree.caps import parse_cap
from pluto_fs import home_lock
from pluto_fs.errors import PlutoError
from pluto_fs.home import Home, home_path
from pluto_fs.units import format_size
from pluto_fs.writeback.journal import Journal
from pluto_fs.writeback.journal_state import (
    JOURNAL_NAME,
    JournalDamaged,
    files_dir,
    journal_path,
    read_local_changes,
)

BY_ID = "by-cache-id"


@dataclass
class SalvageReport:
    """What `salvage` kept, and where."""

    folder: Path
    named: list[str] = field(default_factory=list)  # relative paths of files kept under their name
    by_id: list[str] = field(default_factory=list)  # relative paths of files kept under their cache id
    bytes: int = 0
    damaged_journal: Path | None = None


def _rows(db: sqlite3.Connection, query: str) -> list[tuple]:
    """The rows a damaged database still gives for `query` ([] where it fails)."""
    try:
        return db.execute(query).fetchall()
    except sqlite3.Error:
        return []


def _safe_name(name: object) -> str | None:
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        return None
    return name


def names_from_journal(path: Path, root_writer: bytes) -> dict[str, str]:
    """{cache id: relative path} for the pending files a (possibly damaged) journal still names."""
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        pending = {str(c) for (c,) in _rows(db, "SELECT cache_id FROM files")}
        parent: dict[bytes, tuple[bytes, str]] = {}  # folder writer -> (parent folder writer, name)
        where: dict[str, tuple[bytes, str]] = {}  # cache id -> (folder writer, name)
        for writer, raw in _rows(db, "SELECT writer, entry FROM entries"):
            try:
                row = cbor2.loads(raw)
                kind, name = row[0], _safe_name(row[1])
                if name is None:
                    continue
                if kind == 1:  # a folder: its capability says which folder rows are its own
                    parent[parse_cap(row[9]).writer] = (bytes(writer), name)
                elif kind == 0 and row[12] is not None:
                    where[str(row[12])] = (bytes(writer), name)
            except Exception:  # a damaged row names nothing; the others still may
                continue
    finally:
        db.close()

    def folder_path(writer: bytes, depth: int = 0) -> str:
        if writer == root_writer:
            return ""
        if writer in parent and depth < 256:
            up, name = parent[writer]
            return folder_path(up, depth + 1) + name + "/"
        return f"unknown-folder-{writer.hex()[:8]}/"  # the journal has no row linking it

    return {cid: folder_path(w) + name for cid, (w, name) in where.items() if cid in pending}


def _free_path(path: Path) -> Path:
    if not path.exists():
        return path
    for i in range(1, 10_000):
        candidate = path.with_name(f"{path.name}.{i}")
        if not candidate.exists():
            return candidate
    raise PlutoError(f"too many files named {path} in the salvage folder")


def _move(src: Path, dst: Path) -> None:
    """Move a file; across file systems copy, fsync, then remove the original."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV
            raise
        shutil.copy2(src, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())
        src.unlink()


def _fsync_dirs(root: Path) -> None:
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def salvage(home: Home) -> SalvageReport | None:
    """Keep every local cache file in HOME/salvaged/ and start a fresh journal; None if the journal is sound."""
    with home_lock.hold(home, "salvage"):  # never under a running mount
        return _salvage(home)


def _salvage(home: Home) -> SalvageReport | None:
    try:
        read_local_changes(home)
        return None  # readable: `pluto mount` resumes from it, nothing to salvage
    except JournalDamaged:
        pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = SalvageReport(home.path / "salvaged" / stamp)
    journal = journal_path(home)
    names = names_from_journal(journal, home.keys().root.writer) if journal.exists() else {}
    try:
        cached = sorted(f for f in files_dir(home).iterdir() if f.is_file())
    except FileNotFoundError:
        cached = []
    for f in cached:
        name = names.get(f.name)
        rel = name if name is not None else f"{BY_ID}/{f.name}"
        dst = _free_path(report.folder / rel)
        report.bytes += f.stat().st_size
        _move(f, dst)
        (report.named if name is not None else report.by_id).append(str(dst.relative_to(report.folder)))
    if cached:
        _fsync_dirs(report.folder)
    if journal.exists():
        report.damaged_journal = journal.with_name(f"{JOURNAL_NAME}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = journal.with_name(JOURNAL_NAME + suffix)
            if part.exists():
                os.replace(part, report.damaged_journal.with_name(report.damaged_journal.name + suffix))
    Journal(home.cache / JOURNAL_NAME).close()  # a fresh one: the mount starts from what the peers hold
    return report


def cmd_salvage(args: argparse.Namespace) -> int:
    """Keep the local files a damaged journal may have held, start a fresh journal."""
    home = Home(home_path(args.home))
    home.config()  # a clear error for a home that is not one
    report = salvage(home)
    if report is None:
        print("the upload journal is sound: nothing to salvage (`pluto mount` uploads what it holds)")
        return 0
    count = len(report.named) + len(report.by_id)
    if count:
        print(f"salvaged {count} local file{'s' if count != 1 else ''} ({format_size(report.bytes)}) "
              f"into {report.folder}/:")
        for rel in report.named:
            print(f"  {rel}")
        if report.by_id:
            print(f"  {len(report.by_id)} under {BY_ID}/ (the damaged journal could not tell their names; "
                  "`file` tells what they are)")
    else:
        print("no local file held data: nothing to keep")
    if report.damaged_journal is not None:
        print(f"the damaged journal is kept as {report.damaged_journal}")
    print("started a fresh journal. What is on the peers is safe: `pluto mount` shows it as last published; "
          "copy back from the salvage folder what is missing or newer there.")
    sys.stdout.flush()
    return 0


def add_commands(sub: argparse._SubParsersAction, home_help: str) -> None:
    """Register `pluto salvage` on the main parser."""
    p = sub.add_parser(
        "salvage", help="after a damaged upload journal: keep the local files it may have held, start afresh",
        description="Moves every local cache file to HOME/salvaged/<time>/ (named by its path where the damaged "
                    "journal can still tell), sets the damaged journal aside and starts a fresh one. Nothing is "
                    "deleted. Exit 0 when done or when there is nothing to salvage, 1 when it failed.")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.set_defaults(func=cmd_salvage)
