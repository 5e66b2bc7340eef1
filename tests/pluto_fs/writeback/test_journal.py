"""The write-back journal on its own: per-entry rows, transactions, format 1 migration.

Crash and resume through a real mount are in tests/e2e/test_mount.py; these
tests pin the journal's contract without FUSE or peers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import cbor2
import pytest
import trio

from cryptree.dirnode import new_directory_cap
from cryptree.filenode import InlineData, encode_content
from pluto_fs.errors import HomeError
from pluto_fs.writeback.journal import FORMAT, Journal
from pluto_fs.writeback.namespace import Namespace
from pluto_fs.writeback.nodes import DirNode, FileNode, SymlinkNode

OWN = [0o750, 1000, 1000, 11, 12, 13, {"user.a": b"1"}]


def _format_1_journal(path: Path, dirs: list[tuple[bytes, str, int, bytes]], files: dict[str, int]) -> None:
    """A journal exactly as pluto wrote it before per-entry rows (format 1, user_version 0)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
        CREATE TABLE IF NOT EXISTS dirs (writer BLOB PRIMARY KEY, cap TEXT NOT NULL, seq INTEGER NOT NULL,
                                         state BLOB NOT NULL);
        CREATE TABLE IF NOT EXISTS files (cache_id TEXT PRIMARY KEY, size INTEGER NOT NULL);
    """)
    for row in dirs:
        db.execute("INSERT INTO dirs VALUES (?,?,?,?)", row)
    for cache_id, size in files.items():
        db.execute("INSERT INTO files VALUES (?,?)", (cache_id, size))
    db.close()


def _format_1_state(own: list, rows: list[list], new: bool) -> bytes:
    """The whole-directory state of format 1: [layout 1, own attributes, one row per child, never published]."""
    return cbor2.dumps([1, own, rows, new])


def test_format_1_journal_is_migrated_on_open_and_restores_the_same_tree(tmp_path: Path) -> None:
    root_cap, child_cap = new_directory_cap(), new_directory_cap()
    head = [0o644, 1000, 1000, 1, 2, 3, {}]
    inline = encode_content(InlineData(b"tiny"))
    root_rows = [
        [0, "published.txt", *head, inline, 4, 4, None],
        [0, "pending.bin", *head, None, 0, 0, "c0ffee"],
        [1, "sub", 0o755, 1000, 1000, 1, 2, 3, {}, child_cap.to_string(), True],
        [2, "link", 0o777, 1000, 1000, 1, 2, 3, {}, b"published.txt"],
    ]
    path = tmp_path / "journal.sqlite"
    _format_1_journal(path, [
        (root_cap.writer, root_cap.to_string(), 7, _format_1_state(OWN, root_rows, False)),
        (child_cap.writer, child_cap.to_string(), 0, _format_1_state(OWN, [], True)),
    ], {"c0ffee": 5})
    cache = tmp_path / "files"
    cache.mkdir()
    (cache / "c0ffee").write_bytes(b"hello")

    journal = Journal(path)
    try:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == FORMAT
        tables = {r[0] for r in journal.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "dirs" not in tables
        assert {w for w, *_ in journal.folders()} == {root_cap.writer, child_cap.writer}
        assert sorted(cbor2.loads(e)[1] for e in journal.entries(root_cap.writer)) == [
            "link", "pending.bin", "published.txt", "sub"]
        assert journal.pending_files() == {"c0ffee": 5}

        model = Namespace(None, journal, cache, root_cap)  # type: ignore[arg-type]  # no network needed
        kids = trio.run(model.children, model.root)
        assert model.root.seq == 7 and model.root.mode == 0o750 and model.root.xattrs == {"user.a": b"1"}
        assert isinstance(kids["published.txt"], FileNode) and kids["published.txt"].content == InlineData(b"tiny")
        pending = kids["pending.bin"]
        assert isinstance(pending, FileNode) and pending.dirty and pending.size == 5 and pending in model.dirty_files
        sub = kids["sub"]
        assert isinstance(sub, DirNode) and sub.new and sub.cap == child_cap
        assert isinstance(kids["link"], SymlinkNode) and kids["link"].target == b"published.txt"
        assert trio.run(model.children, sub) == {}
        assert sub.new and model.root in model.dirty_dirs and sub in model.dirty_dirs
    finally:
        journal.close()
    # Opened again: already format 2, nothing left to migrate, the rows are still there.
    journal = Journal(path)
    try:
        assert len(journal.folders()) == 2 and len(journal.entries(root_cap.writer)) == 4
    finally:
        journal.close()


def test_an_unreadable_format_1_journal_is_refused_with_one_line_and_left_intact(tmp_path: Path) -> None:
    cap = new_directory_cap()
    path = tmp_path / "journal.sqlite"
    _format_1_journal(path, [(cap.writer, cap.to_string(), 1, b"\xff not cbor")], {})
    with pytest.raises(HomeError) as err:
        Journal(path)
    assert "\n" not in str(err.value) and "older pluto" in str(err.value)
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM dirs").fetchone()[0] == 1  # rolled back: nothing lost
    db.close()


def test_a_journal_from_a_newer_pluto_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={FORMAT + 1}")
    db.close()
    with pytest.raises(HomeError) as err:
        Journal(path)
    message = str(err.value)
    assert "\n" not in message and "newer pluto" in message and str(path) in message


def test_clean_folders_are_dropped_on_open_dirty_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    for w in (b"c" * 32, b"d" * 32):
        with journal.transaction():
            journal.put_folder(w, "cap", 1, b"attrs", False)
            journal.put_entry(w, "x", b"row")
    journal.folder_published(b"c" * 32, 2, clean=True)
    journal.folder_published(b"d" * 32, 2, clean=False)
    assert [w for w, *_ in journal.folders()] == [b"d" * 32]
    assert journal.entries(b"c" * 32) == [b"row"]  # kept while the session runs: the next change is one row
    journal.close()
    journal = Journal(path)
    try:
        assert [(w, s) for w, _, s, *_ in journal.folders()] == [(b"d" * 32, 2)]
        assert journal.entries(b"c" * 32) == [] and journal.entries(b"d" * 32) == [b"row"]
    finally:
        journal.close()


def test_a_failed_transaction_leaves_nothing_and_changes_the_generation(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        w = b"w" * 32
        gen = journal.generation
        with pytest.raises(RuntimeError):
            with journal.transaction():
                journal.put_entry(w, "a", b"1")
                with journal.transaction():
                    journal.put_entry(w, "b", b"2")
                raise RuntimeError("boom")
        assert journal.entries(w) == [] and journal.generation == gen + 1
        # A nested failure that an outer block swallows still rolls the whole transaction back.
        with pytest.raises(sqlite3.OperationalError):
            with journal.transaction():
                journal.put_entry(w, "a", b"1")
                try:
                    with journal.transaction():
                        raise ValueError("inner")
                except ValueError:
                    pass
        assert journal.entries(w) == [] and journal.generation == gen + 2
        with journal.transaction():
            journal.put_entry(w, "a", b"1")
        assert journal.entries(w) == [b"1"]
    finally:
        journal.close()


def test_journal_writes_per_change_do_not_grow_with_the_directory(tmp_path: Path) -> None:
    """The reason for per-entry rows: a change of one entry writes one row, not the directory."""
    journal = Journal(tmp_path / "journal.sqlite")
    try:
        root_cap = new_directory_cap()
        cache = tmp_path / "files"
        model = Namespace(None, journal, cache, root_cap)  # type: ignore[arg-type]
        model.root.children = {}
        statements: list[str] = []
        journal.db.set_trace_callback(statements.append)
        for i in range(300):
            statements.clear()
            node = model.add_file(model.root, f"f{i:03d}", 0o644, 0, 0)
            model.mark_written(node)
            writes = [s for s in statements if s.split()[0] in ("INSERT", "DELETE", "UPDATE")]
            assert len(writes) <= (302 if i == 0 else 4), (i, writes)
        statements.clear()
        model.rename(model.root.children["f000"], model.root, "renamed")
        entry_writes = [s for s in statements if s.startswith(("INSERT", "DELETE")) and " entries" in s]
        assert len(entry_writes) == 2, entry_writes  # drop the old name, add the new one
        journal.db.set_trace_callback(None)
        rows = {cbor2.loads(e)[1] for e in journal.entries(root_cap.writer)}
        assert rows == set(model.root.children) and len(rows) == 300
    finally:
        journal.close()
