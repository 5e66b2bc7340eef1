"""The journal seen from outside a mount (pluto_fs/writeback/journal_state.py), salvage naming, and the risk line.

End-to-end refusals and salvage through real mounts are in tests/e2e/test_mount_lifecycle.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest

from cryptree.dirnode import new_directory_cap
from cryptree.identity import new_seed
from pluto_fs.home import Config, Home
from pluto_fs.volume.risk import PeerCounts, assess, at_risk
from pluto_fs.writeback.journal import Journal
from pluto_fs.writeback.journal_state import (
    JournalDamaged,
    LocalChanges,
    journal_path,
    open_journal,
    read_local_changes,
)
from pluto_fs.writeback.salvage import names_from_journal, salvage

HEAD = [0o644, 0, 0, 1, 2, 3, {}]


def _home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    home.create(new_seed(), Config(coordinator="127.0.0.1:1"))
    return home


def _cache_file(home: Home, cache_id: str, data: bytes) -> None:
    (home.cache / "files").mkdir(parents=True, exist_ok=True)
    (home.cache / "files" / cache_id).write_bytes(data)


def _file_row(name: str, cache_id: str | None) -> bytes:
    return cbor2.dumps([0, name, *HEAD, None, 0, 0, cache_id])


def _dir_row(name: str, cap) -> bytes:
    return cbor2.dumps([1, name, *HEAD[:6], {}, cap.to_string(), False])


def test_reading_a_missing_journal_creates_nothing(tmp_path: Path) -> None:
    home = _home(tmp_path)
    assert read_local_changes(home) == LocalChanges()
    assert not journal_path(home).exists()


def test_pending_files_are_counted_with_the_size_of_their_local_copy(tmp_path: Path) -> None:
    home = _home(tmp_path)
    journal = Journal(home.cache / "journal.sqlite")
    root = home.keys().root
    journal.put_folder(root.writer, root.to_string(), 1, cbor2.dumps(HEAD), False)
    journal.put_file("aa", 0)  # recorded at create time, before any byte was written
    journal.put_file("gone", 5)  # no local copy any more: nothing to upload from this machine
    _cache_file(home, "aa", b"x" * 1234)
    changes = read_local_changes(home)  # while the journal is open for writing, as under a mount
    journal.close()
    assert changes == LocalChanges(files=1, bytes=1234, folders=1)
    assert changes.describe() == "1 file (1.2 KiB) and 1 folder" and changes.verb() == "are"


def test_an_empty_journal_next_to_local_data_is_damage_and_the_mount_refuses_it(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _cache_file(home, "c0ffee", b"pending bytes")
    journal_path(home).write_bytes(b"")
    with pytest.raises(JournalDamaged) as err:
        read_local_changes(home)
    assert "1 local file" in str(err.value) and "pluto salvage" in str(err.value)
    with pytest.raises(JournalDamaged):
        open_journal(home)
    assert (home.cache / "files" / "c0ffee").read_bytes() == b"pending bytes"
    assert journal_path(home).stat().st_size == 0, "a refused journal is left as it was"


def test_an_empty_journal_with_no_local_data_simply_starts_fresh(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _cache_file(home, "empty", b"")  # a new empty file has no data to lose
    journal_path(home).write_bytes(b"")
    open_journal(home).close()


def test_garbage_is_refused_in_one_line_naming_the_recovery(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _cache_file(home, "c0ffee", b"x")
    journal_path(home).write_bytes(os.urandom(8192))
    for read in (read_local_changes, open_journal):
        with pytest.raises(JournalDamaged) as err:
            read(home)
        text = str(err.value)
        assert "\n" not in text and "is damaged" in text and "safe" in text and "pluto salvage" in text


def test_salvage_names_pending_files_by_path_as_far_as_the_journal_links_folders(tmp_path: Path) -> None:
    home = _home(tmp_path)
    root, docs, orphan = home.keys().root, new_directory_cap(), new_directory_cap()
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.put_entry(root.writer, "docs", _dir_row("docs", docs))
    j.put_entry(root.writer, "top.txt", _file_row("top.txt", "c1"))
    j.put_entry(docs.writer, "a.txt", _file_row("a.txt", "c2"))
    j.put_entry(orphan.writer, "b.txt", _file_row("b.txt", "c3"))  # its folder's parent has no rows
    j.put_entry(root.writer, "clean.txt", _file_row("clean.txt", "c4"))
    j.put_entry(root.writer, "../evil", _file_row("../evil", "c5"))
    for cid in ("c1", "c2", "c3", "c5"):
        j.put_file(cid, 1)
    j.close()
    names = names_from_journal(path, root.writer)
    assert names == {"c1": "top.txt", "c2": "docs/a.txt", "c3": f"unknown-folder-{orphan.writer.hex()[:8]}/b.txt"}


def test_salvage_keeps_every_cache_file_and_starts_a_fresh_journal(tmp_path: Path) -> None:
    home = _home(tmp_path)
    _cache_file(home, "c0ffee", b"pending")
    _cache_file(home, "beef", b"maybe clean")
    journal_path(home).write_bytes(b"garbage" * 1000)
    report = salvage(home)
    assert report is not None and sorted(report.by_id) == ["by-cache-id/beef", "by-cache-id/c0ffee"]
    assert (report.folder / "by-cache-id" / "c0ffee").read_bytes() == b"pending"
    assert report.damaged_journal is not None and report.damaged_journal.read_bytes() == b"garbage" * 1000
    assert read_local_changes(home) == LocalChanges()  # a fresh, readable journal
    assert salvage(home) is None  # nothing more to do


def test_at_risk_is_exactly_risk_not_none() -> None:
    healthy = PeerCounts(alive=5, offline=0, lost=0)
    cases = [
        (healthy, LocalChanges(), None),
        (healthy, LocalChanges(files=1, bytes=10), None),
        (PeerCounts(alive=2, offline=3, lost=0), LocalChanges(), None),
        (PeerCounts(alive=2, offline=0, lost=0), LocalChanges(), None),  # peers never registered
        (None, LocalChanges(), None),  # coordinator down
        (healthy, LocalChanges(), "the journal cannot be read"),
    ]
    risks = [assess(peers, 3, 5, "3.0 d", local, problem) for peers, local, problem in cases]
    assert risks[0] == "none"
    assert [at_risk(r) for r in risks] == [False, True, True, True, True, True]
    assert "1 file (10 B) only on this machine" in risks[1]
    assert risks[2].startswith("unreadable") and risks[3].startswith("unreadable")
    assert risks[4].startswith("unknown")
