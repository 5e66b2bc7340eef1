"""A real grid, volume and journal under the write-back engines, without FUSE: what their unit tests run on.

One grid per test module (the module-scoped `grid` fixture in conftest.py),
one fresh identity per test, so tests share processes but never a folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from cryptree.identity import new_seed
from pluto_fs.grid.localgrid import LocalGrid
from pluto_fs.home import Config, Home
from pluto_fs.volume.volume import Volume, open_volume
from pluto_fs.writeback.journal import Journal
from pluto_fs.writeback.namespace import Namespace
from pluto_fs.writeback.nodes import DirNode, FileNode
from pluto_fs.writeback.quota import Quota
from pluto_fs.writeback.shared_folder import Shares
from pluto_fs.writeback.write_back import WriteBack


def new_home(where: Path, grid: LocalGrid, seed: bytes | None = None) -> Home:
    """A home on `grid`; the same `seed` twice makes two devices of one user."""
    home = Home(where)
    home.create(seed or new_seed(), Config(coordinator=grid.coordinator.address))
    home.cache.mkdir(parents=True, exist_ok=True)
    return home


@dataclass
class Device:
    """One mount's engines: the namespace and its write-back over a real volume and journal."""

    home: Home
    volume: Volume
    journal: Journal
    ns: Namespace
    wb: WriteBack


@asynccontextmanager
async def device(home: Home, shares: Shares | None = None, quota: Quota | None = None) -> AsyncIterator[Device]:
    """The engines of a mount of `home`, with the grid's peers known; the journal is closed after."""
    journal = Journal(home.cache / "journal.sqlite")
    try:
        async with open_volume(home) as volume:
            with trio.fail_after(20):  # the peers' first heartbeats reach the coordinator
                while True:
                    if len(await volume.net.find_peers(5)) >= 5:
                        break
                    await trio.sleep(0.2)
            ns = Namespace(volume, journal, home.cache / "files", volume.keys.root, shares, quota)
            yield Device(home, volume, journal, ns, WriteBack(ns, volume, journal))
    finally:
        journal.close()


def write(ns: Namespace, node: FileNode, data: bytes) -> None:
    """What a write(2) through the mount does: the bytes into the cache file, then the change recorded."""
    assert node.cache_id is not None
    ns.cache_path(node.cache_id).write_bytes(data)
    node.size = len(data)
    ns.mark_written(node)


async def new_file(ns: Namespace, parent: DirNode, name: str, data: bytes) -> FileNode:
    """create(2) then write(2) and close(2) of `name` in `parent`."""
    await ns.children(parent)
    node = ns.create_file(parent, name, 0o644, 1000, 1000)
    write(ns, node, data)
    return node


async def published(volume: Volume, d: DirNode) -> dict[str, object]:
    """Name -> entry of the version of `d` the network holds now."""
    assert d.cap is not None
    return dict((await volume.load_dir(d.cap, missing_ok=True)).by_name())
