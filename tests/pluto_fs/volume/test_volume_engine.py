"""The volume engine on its own (pluto_fs/volume/volume.py): file bytes in and out, folders saved and
loaded, compare-and-swap and merging, over one real local grid for the whole module.

Big trees, restore from the words and lost peers are in tests/e2e/test_volume.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from cryptree.dirnode import DirAttrs, DirEntry, new_directory_cap
from cryptree.filenode import FileRef, InlineData
from cryptree.identity import new_seed
from pluto_fs.errors import ConflictError, NotEnoughPeers
from pluto_fs.grid.localgrid import LocalGrid
from pluto_fs.home import Config, Home
from pluto_fs.volume.volume import Volume, open_volume

BIG = os.urandom(3_000_000)  # several content-defined chunks (about 1 MiB each)


def _home(where: Path, grid: LocalGrid, seed: bytes | None = None) -> Home:
    home = Home(where)
    home.create(seed or new_seed(), Config(coordinator=grid.coordinator.address))
    return home


@asynccontextmanager
async def _volume(home: Home) -> AsyncIterator[Volume]:
    async with open_volume(home) as vol:
        with trio.fail_after(20):  # the peers' first heartbeats reach the coordinator
            while True:
                if len(await vol.net.find_peers(5)) >= 5:
                    break
                await trio.sleep(0.2)
        yield vol


def _entry(name: str, data: bytes) -> DirEntry:
    return DirEntry(name, InlineData(data), size=len(data))


def _remove(entries: dict[str, DirEntry], name: str) -> None:
    del entries[name]


def test_file_bytes_round_trip_inline_and_in_chunks(grid: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(BIG)

    async def run() -> None:
        async with _volume(_home(tmp_path / "home", grid)) as vol:
            tiny = await vol.store(b"tiny")
            assert tiny == InlineData(b"tiny")  # small files live in their folder entry
            stored = await vol.store(BIG)
            assert isinstance(stored, FileRef)
            from_file, size = await vol.store_file(src)
            assert size == len(BIG) and isinstance(from_file, FileRef)
            await vol.flush()
            assert await vol.read_all(stored, len(BIG)) == BIG
            assert await vol.read_all(from_file, len(BIG)) == BIG
            assert await vol.read(stored, 123_456, 2_000_000, len(BIG)) == BIG[123_456:2_123_456]  # across chunks
            assert await vol.read(stored, len(BIG) - 10, 100, len(BIG)) == BIG[-10:]  # fewer at the end
            assert await vol.read(tiny, 1, 2) == b"in"
            manifest = await vol.manifest(stored)
            assert manifest.size == len(BIG) and len(manifest.chunks) > 1
            # The same bytes again dedup to the same chunks: nothing new is packed.
            packed = vol.packs.stats.chunk_bytes_packed
            again = await vol.store(BIG, previous=manifest)
            assert [c.chunk_id for c in (await vol.manifest(again)).chunks] == [c.chunk_id for c in manifest.chunks]
            assert vol.packs.stats.chunk_bytes_packed == packed

    trio.run(run)


def test_folders_save_and_load_with_their_attributes(grid: LocalGrid, tmp_path: Path) -> None:
    cap = new_directory_cap()
    attrs = DirAttrs(0o750, 1000, 1000, 1, 2, 3, {"user.k": b"v"})

    async def run() -> None:
        async with _volume(_home(tmp_path / "home", grid)) as vol:
            empty, siblings = await vol.load_folder(cap, missing_ok=True)
            assert (empty.seq, empty.entries, siblings) == (0, (), False)
            with pytest.raises(NotEnoughPeers):
                await vol.load_folder(cap)  # absent and not allowed to be: lost, not empty
            saved = await vol.save_dir(cap, [_entry("b", b"2"), _entry("a", b"1")], attrs, 0)
            assert saved.seq == 1 and [e.name for e in saved.entries] == ["a", "b"]
            loaded, siblings = await vol.load_folder(cap.read_cap())  # a read capability opens it too
            assert loaded.seq == 1 and not siblings and loaded.attrs == attrs
            assert loaded.get("a").child == InlineData(b"1") and loaded.get("b").size == 1

    trio.run(run)


def test_saving_over_a_version_you_did_not_see_is_a_conflict(grid: LocalGrid, tmp_path: Path) -> None:
    cap = new_directory_cap()

    async def run() -> None:
        async with _volume(_home(tmp_path / "home", grid)) as vol:
            await vol.save_dir(cap, [_entry("a", b"1")], None, 0)
            await vol.save_dir(cap, [_entry("a", b"1"), _entry("b", b"2")], None, 1)
            with pytest.raises(ConflictError):
                await vol.save_dir(cap, [_entry("c", b"3")], None, 1)  # built on version 1; 2 exists
            assert [e.name for e in (await vol.load_dir(cap)).entries] == ["a", "b"]  # nothing overwritten

    trio.run(run)


def test_read_modify_write_from_two_devices_merges_both_changes(grid: LocalGrid, tmp_path: Path) -> None:
    seed = new_seed()

    async def run() -> None:
        async with _volume(_home(tmp_path / "a", grid, seed)) as a, _volume(_home(tmp_path / "b", grid, seed)) as b:
            assert a.writer_tag != b.writer_tag  # two devices of one user
            root = a.keys.root
            first = await a.update_dir(root, lambda es: es.update(a=_entry("a", b"from a")), missing_ok=True)
            await b.update_dir(root, lambda es: es.update(b=_entry("b", b"from b")))
            # a writes on top of `first`, which is no longer the newest: merged, nothing of b's dropped.
            merged = await a.update_dir(root, lambda es: es.update(c=_entry("c", b"from a again")), base=first)
            assert [e.name for e in merged.entries] == ["a", "b", "c"]
            assert {e.name for e in (await b.load_dir(root)).entries} == {"a", "b", "c"}
            deleted = await b.update_dir(root, lambda es: _remove(es, "a"))
            assert [e.name for e in deleted.entries] == ["b", "c"] and [t.name for t in deleted.tombstones] == ["a"]

    trio.run(run)
