"""The namespace on its own (no FUSE, no write-back): loading, changes, the journal rows they leave, resume,
the `shared/` folder and the storage-exchange check, over a real grid and a real journal."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest
import trio
from writeback_stack import device, new_file, new_home, write

from cryptree.dirnode import new_directory_cap
from pluto_fs.errors import QuotaExceeded
from pluto_fs.grid.localgrid import LocalGrid
from pluto_fs.writeback.nodes import DirNode, FileNode, SymlinkNode
from pluto_fs.writeback.quota import Quota


def _row_names(journal, d: DirNode) -> set[str]:
    return {cbor2.loads(raw)[1] for raw in journal.entries(d.cap.writer)}


def test_changes_show_at_once_and_each_leaves_its_journal_rows(grid: LocalGrid, tmp_path: Path) -> None:
    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid)) as dev:
            ns, root = dev.ns, dev.ns.root
            assert await ns.children(root) == {}  # a new user's root: absent on the network, empty
            docs = ns.add_dir(root, "docs", 0o755, 1000, 1000)
            note = await new_file(ns, docs, "note.txt", b"hello")
            link = ns.add_symlink(docs, "link", b"note.txt", 1000, 1000)
            assert set(await ns.children(docs)) == {"note.txt", "link"}
            assert ns.inodes.get(note.ino) is note and isinstance(ns.inodes.get(link.ino), SymlinkNode)
            assert docs.new and {root, docs} <= ns.dirty_dirs and note in ns.dirty_files
            assert {w for w, *_ in dev.journal.folders()} == {root.cap.writer, docs.cap.writer}
            assert _row_names(dev.journal, docs) == {"note.txt", "link"}
            assert dev.journal.pending_files() == {note.cache_id: 0}  # recorded at the first write

            ns.rename(note, root, "moved.txt")
            assert "moved.txt" in root.children and "note.txt" not in docs.children
            assert _row_names(dev.journal, root) == {"docs", "moved.txt"}
            assert _row_names(dev.journal, docs) == {"link"}  # never published: no tombstone row

            cache = ns.cache_path(note.cache_id)
            ns.detach(note)  # unlink with nothing holding it: the inode, the cache file and its rows go
            assert ns.inodes.get(note.ino) is None and not cache.exists() and note not in ns.dirty_files
            assert dev.journal.pending_files() == {} and _row_names(dev.journal, root) == {"docs"}

    trio.run(run)


def test_a_removed_published_name_is_journaled_as_deleted(grid: LocalGrid, tmp_path: Path) -> None:
    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid)) as dev:
            ns, root = dev.ns, dev.ns.root
            gone = await new_file(ns, root, "gone.txt", b"bye")
            await dev.wb.flush_all()
            assert gone.on_network
            ns.detach(gone)
            assert "gone.txt" in root.tombstones  # merging must know it was deleted, not never seen
            rows = [cbor2.loads(raw) for raw in dev.journal.entries(root.cap.writer)]
            assert [r[1] for r in rows if r[0] == 3] == ["gone.txt"]  # a DELETED row (journal_rows.py)
            assert [r[1] for r in rows if r[0] == 4] == ["gone.txt"]  # ...and a SHADOW row of what the network has

    trio.run(run)


def test_unpublished_changes_come_back_from_the_journal_after_a_crash(grid: LocalGrid, tmp_path: Path) -> None:
    home = new_home(tmp_path / "home", grid)

    async def before_crash() -> None:
        async with device(home) as dev:
            ns = dev.ns
            await ns.children(ns.root)
            docs = ns.add_dir(ns.root, "docs", 0o750, 1000, 1000)
            await new_file(ns, docs, "draft.txt", b"not uploaded yet")
            ns.add_symlink(docs, "latest", b"draft.txt", 1000, 1000)
            # No write-back ran: the journal alone holds all of it when the process dies here.

    async def after_crash() -> None:
        async with device(home) as dev:
            ns = dev.ns
            assert ns.journaled_folders_waiting() == 2
            assert await ns.replay_journal() == 2 and ns.journaled_folders_waiting() == 0
            docs = ns.root.children["docs"]
            assert isinstance(docs, DirNode) and docs.new and docs.mode == 0o750
            draft = docs.children["draft.txt"]
            assert isinstance(draft, FileNode) and draft.dirty and draft.size == 16 and draft in ns.dirty_files
            assert ns.cache_path(draft.cache_id).read_bytes() == b"not uploaded yet"
            assert isinstance(docs.children["latest"], SymlinkNode)
            assert dev.wb.pending() == (1, 16, 2)

    trio.run(before_crash)
    (home.cache / "files" / "left-over").write_bytes(b"x")  # a cache file the journal does not name
    trio.run(after_crash)
    assert not (home.cache / "files" / "left-over").exists()


def test_the_shared_folder_lists_owners_read_only_and_is_never_journaled(grid: LocalGrid, tmp_path: Path) -> None:
    share = new_directory_cap()
    writable = new_directory_cap()
    shares = {"alice": (share.read_cap(), {writable.writer: writable})}

    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid), shares=lambda: shares) as dev:
            ns, root = dev.ns, dev.ns.root
            kids = await ns.children(root)
            shared = ns.shared
            assert shared is not None and kids["shared"] is shared and ns.virtual_names(root) == {"shared"}
            owners = await ns.children(shared)
            alice = owners["alice"]
            assert isinstance(alice, DirNode) and alice.cap == share.read_cap()
            assert ns.share_root(alice) is None and ns.share_root(root) is None
            ns.touch_dir(shared)  # read-only: nothing of ours to publish
            assert shared not in ns.dirty_dirs
            ns.add_dir(root, "mine", 0o755, 0, 0)
            assert _row_names(dev.journal, root) == {"mine"}  # `shared` is the mount's own, never a row
            ns.refresh_shared()
            assert shared.children is None  # reloaded from the grants on next use

    trio.run(run)


def test_writes_the_storage_exchange_cannot_take_are_refused_at_once(grid: LocalGrid, tmp_path: Path) -> None:
    quota = Quota(expansion=2.0)

    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid), quota=quota) as dev:
            ns = dev.ns
            await new_file(ns, ns.root, "big", b"x" * 100)  # pending: costs 200 once stored
            ns.check_space(10**9)  # no figures yet: nothing to refuse on
            quota.set_allowance(1000, 700)
            ns.check_space(50)  # 700 + (100 + 50) * 2 = 1000: just fits
            with pytest.raises(QuotaExceeded) as err:
                ns.check_space(51)
            assert "storage exchange" in str(err.value)
            ns.check_space(0)  # shrinking or rewriting in place is never refused

    trio.run(run)


def test_a_setgid_folder_passes_on_its_group(grid: LocalGrid, tmp_path: Path) -> None:
    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid)) as dev:
            ns = dev.ns
            await ns.children(ns.root)
            team = ns.add_dir(ns.root, "team", 0o2775, os.getuid(), 4242)
            sub = ns.add_dir(team, "sub", 0o755, os.getuid(), 1000)
            f = ns.add_file(team, "f", 0o644, os.getuid(), 1000)
            write(ns, f, b"")
            assert (sub.gid, sub.mode & 0o2000) == (4242, 0o2000)
            assert (f.gid, f.mode & 0o2000) == (4242, 0)

    trio.run(run)
