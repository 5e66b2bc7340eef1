"""The write-back on its own (no FUSE): uploads, publishing, fsync semantics, pending counts, several
writers merging, the background loop; over a real grid and a real journal.

Through real mounts, the same rules are tested in tests/e2e/test_mount.py and test_concurrent_writers.py.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import trio
import trio.testing
from writeback_stack import device, new_file, new_home, published, write

from cryptree.identity import new_seed
from pluto_fs.grid.localgrid import LocalGrid
from pluto_fs.mount.retrying import Retrying
from pluto_fs.writeback.nodes import DirNode, FileNode

BIG = os.urandom(300_000)  # stored as chunks in a pack, not inline in its folder
NEWER = b"newer bytes, written while the older ones upload"
CONFLICT = re.compile(r"^notes\.pluto-conflict-\d{8}-\d{6}-[0-9a-f]{8}\.txt$")


def test_fsync_of_a_file_stores_its_bytes_and_publishes_every_folder_above(grid: LocalGrid, tmp_path: Path) -> None:
    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid)) as dev:
            ns, wb = dev.ns, dev.wb
            await ns.children(ns.root)
            docs = ns.add_dir(ns.root, "docs", 0o755, 0, 0)
            big = await new_file(ns, docs, "big.bin", BIG)
            await new_file(ns, docs, "small.txt", b"small")
            assert wb.pending() == (2, len(BIG) + 5, 2)
            await wb.sync_path(big)
            # The other file waits for the write-back, and so does its folder (published without it).
            assert not big.dirty and wb.pending() == (1, 5, 1)
            root_now = await published(dev.volume, ns.root)
            assert set(root_now) == {"docs"}
            docs_now = await published(dev.volume, docs)
            assert set(docs_now) == {"big.bin"}  # small.txt's bytes are only local: left out
            assert await dev.volume.read_all(docs_now["big.bin"].child, len(BIG)) == BIG
            await wb.flush_all()
            assert wb.pending() == (0, 0, 0) and dev.journal.folders() == [] and dev.journal.pending_files() == {}
            assert set(await published(dev.volume, docs)) == {"big.bin", "small.txt"}

    trio.run(run)


def test_fsync_of_a_folder_publishes_its_entries_with_their_data_but_nothing_deeper(grid: LocalGrid,
                                                                                    tmp_path: Path) -> None:
    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid)) as dev:
            ns, wb = dev.ns, dev.wb
            await ns.children(ns.root)
            docs = ns.add_dir(ns.root, "docs", 0o755, 0, 0)
            await new_file(ns, docs, "x.txt", b"x" * 5000)
            sub = ns.add_dir(docs, "sub", 0o755, 0, 0)
            await new_file(ns, sub, "y.txt", b"y" * 7000)
            await wb.sync_dir(docs)
            assert set(await published(dev.volume, docs)) == {"x.txt", "sub"}
            assert await published(dev.volume, sub) == {}  # linked, so published first; y's bytes are not stored
            assert wb.pending() == (1, 7000, 1)
            await wb.sync_dir(sub)
            assert set(await published(dev.volume, sub)) == {"y.txt"} and wb.pending() == (0, 0, 0)

    trio.run(run)


def test_a_file_written_again_while_uploading_stays_pending(grid: LocalGrid, tmp_path: Path) -> None:
    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid)) as dev:
            ns, wb = dev.ns, dev.wb
            f = await new_file(ns, await _root(dev), "log.txt", BIG)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wb.upload_files, [f])
                await trio.testing.wait_all_tasks_blocked()  # the upload is under way, waiting on I/O
                write(ns, f, NEWER)
            assert f.dirty and wb.pending()[0] == 1  # the next round stores the newer bytes
            await wb.flush_all()
            entry = (await published(dev.volume, ns.root))["log.txt"]
            assert await dev.volume.read_all(entry.child, entry.size) == NEWER

    trio.run(run)


def test_published_files_read_back_on_another_device(grid: LocalGrid, tmp_path: Path) -> None:
    seed = new_seed()

    async def run() -> None:
        async with device(new_home(tmp_path / "a", grid, seed)) as a:
            await new_file(a.ns, await _root(a), "big.bin", BIG)
            await a.wb.flush_all()
        async with device(new_home(tmp_path / "b", grid, seed)) as b:
            big = (await b.ns.children(b.ns.root))["big.bin"]
            assert isinstance(big, FileNode) and not big.dirty and big.size == len(BIG)
            assert await b.ns.read_published(big, 1000, 50) == BIG[1000:1050]
            path = await b.ns.materialize(big)
            assert path.read_bytes() == BIG

    trio.run(run)


async def _root(dev) -> DirNode:
    await dev.ns.children(dev.ns.root)
    return dev.ns.root


def test_two_devices_adding_to_one_folder_merge_and_keep_both(grid: LocalGrid, tmp_path: Path) -> None:
    seed = new_seed()

    async def run() -> None:
        async with device(new_home(tmp_path / "a", grid, seed)) as a, \
                device(new_home(tmp_path / "b", grid, seed)) as b:
            await _root(a)
            await _root(b)  # b's view now predates what a publishes next
            await new_file(a.ns, a.ns.root, "from-a.txt", b"a")
            await a.wb.flush_all()
            await new_file(b.ns, b.ns.root, "from-b.txt", b"b")
            await b.wb.flush_all()  # loses the compare-and-swap, merges a's version, publishes the merge
            assert set(await published(a.volume, a.ns.root)) == {"from-a.txt", "from-b.txt"}
            assert set(b.ns.root.children) == {"from-a.txt", "from-b.txt"}  # b's tree took a's file in
            await a.wb.refresh(a.ns.root, force=True)
            assert set(a.ns.root.children) == {"from-a.txt", "from-b.txt"}

    trio.run(run)


def test_the_same_file_edited_on_two_devices_keeps_a_winner_and_a_conflict_copy(grid: LocalGrid,
                                                                              tmp_path: Path) -> None:
    seed = new_seed()

    async def run() -> None:
        async with device(new_home(tmp_path / "a", grid, seed)) as a, \
                device(new_home(tmp_path / "b", grid, seed)) as b:
            await new_file(a.ns, await _root(a), "notes.txt", b"first draft")
            await a.wb.flush_all()
            notes_b = (await b.ns.children(b.ns.root))["notes.txt"]
            assert isinstance(notes_b, FileNode)
            write(a.ns, a.ns.root.children["notes.txt"], b"edited on a")
            await a.wb.flush_all()
            await b.ns.materialize(notes_b)
            write(b.ns, notes_b, b"edited on b, concurrently")
            await b.wb.flush_all()
            now = await published(b.volume, b.ns.root)
            copies = [n for n in now if CONFLICT.match(n)]
            assert len(copies) == 1 and "notes.txt" in now, sorted(now)
            contents = {await b.volume.read_all(now[n].child, now[n].size) for n in ("notes.txt", copies[0])}
            assert contents == {b"edited on a", b"edited on b, concurrently"}
            assert set(b.ns.root.children) == set(now)

    trio.run(run)


def test_the_background_loop_writes_back_closed_files(grid: LocalGrid, tmp_path: Path) -> None:
    async def run() -> None:
        async with device(new_home(tmp_path / "home", grid)) as dev:
            ns, wb = dev.ns, dev.wb
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wb.run, Retrying("write-back"))
                open_for_writing = await new_file(ns, await _root(dev), "open.txt", b"still being written")
                open_for_writing.writers = 1
                open_for_writing.last_write = time.monotonic() + 3600  # and still writing, however slow this runs
                await new_file(ns, ns.root, "closed.txt", b"closed")
                with trio.fail_after(15):
                    while True:
                        if wb.pending()[0] == 1 and "closed.txt" in await published(dev.volume, ns.root):
                            break
                        await trio.sleep(0.1)
                assert open_for_writing.dirty  # open and written lately: not yet
                open_for_writing.writers = 0
                ns.note_change()  # what release(2) does
                with trio.fail_after(15):
                    while True:
                        if wb.pending() == (0, 0, 0):
                            break
                        await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
            assert set(await published(dev.volume, ns.root)) == {"open.txt", "closed.txt"}

    trio.run(run)


def test_a_crash_before_the_upload_resumes_from_the_journal(grid: LocalGrid, tmp_path: Path) -> None:
    home = new_home(tmp_path / "home", grid)

    async def before_crash() -> None:
        async with device(home) as dev:
            await new_file(dev.ns, await _root(dev), "unsent.txt", b"only in the journal and the cache")

    async def after_crash() -> None:
        async with device(home) as dev:
            assert dev.wb.pending() == (0, 0, 1)  # the root is journaled, not loaded yet
            await dev.ns.replay_journal()
            assert dev.wb.pending() == (1, 33, 1)
            await dev.wb.flush_all()
            assert dev.wb.pending() == (0, 0, 0)
            entry = (await published(dev.volume, dev.ns.root))["unsent.txt"]
            assert await dev.volume.read_all(entry.child, entry.size) == b"only in the journal and the cache"

    trio.run(before_crash)
    trio.run(after_crash)
