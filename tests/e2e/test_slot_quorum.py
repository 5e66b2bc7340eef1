"""Folder updates count only when a majority of the folder's fixed replica set stored them.

Reproduction of issue 10, item 1: the replica set used to be ranked over the
peers alive at that moment and the quorum shrank with it, so with 3 of 5
peers down an update was "confirmed" by 2 copies that later readers never
asked; two versions with one sequence number then wedged the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import (
    fsync_dir,
    ls,
    peer_alive,
    pluto,
    restore_home,
    wait_listed_offline,
    wait_until,
    write_durably,
)

from pluto_fs.grid.testing import start_mounted_volume


def test_with_three_of_five_peers_down_a_folder_update_is_refused_and_nothing_flips_later(tmp_path: Path) -> None:
    vol = start_mounted_volume(tmp_path / "m", timeout=10.0)
    grid = vol.grid
    try:
        d = vol.path / "d"
        d.mkdir()
        write_durably(d / "a", b"acknowledged")
        fsync_dir(d)
        for i in (0, 1, 2):
            grid.storage[i].kill()
        wait_listed_offline(vol.home, grid, [0, 1, 2])
        # Two replicas of the five cannot acknowledge anything: fsync must fail, not "succeed" on 2.
        with pytest.raises(OSError):
            write_durably(d / "b", b"never acknowledged")

        vol.kill()  # the machine is lost: its journal and cache with it
        vol.drop_cache()
        for i in (3, 4):
            grid.storage[i].kill()
        for i in (0, 1, 2):
            grid.restart_peer(i)
        other = restore_home(vol.home, grid, tmp_path / "new-machine")
        assert ls(other, "/d") == ["a"]  # b was never acknowledged
        src = tmp_path / "c-src"
        src.mkdir()
        (src / "c").write_bytes(b"written on the new machine")
        pluto(other, "put", str(src), "/d")
        for i in (3, 4):
            grid.restart_peer(i)
        listings = {tuple(ls(other, "/d")) for _ in range(8)}
        assert len(listings) == 1, f"the folder flips between versions: {listings}"
        # b reached 2 of the 5 replicas and was never acknowledged: it may show up (nothing a
        # writer tried is thrown away) but must not come and go; a and c were acknowledged.
        (listing,) = listings
        assert {"a", "c"} <= set(listing) <= {"a", "b", "c"}, listing
        # Not wedged: the folder still takes updates, and every reader sees them.
        (src / "c").unlink()
        (src / "e").write_bytes(b"later")
        pluto(other, "put", str(src), "/d")
        assert {tuple(ls(other, "/d")) for _ in range(4)} == {tuple(sorted(set(listing) | {"e"}))}
    finally:
        vol.close()


def test_a_write_acknowledged_by_a_majority_survives_losing_that_majority_but_one(tmp_path: Path) -> None:
    """Three replicas took the update; two of them are then lost for good: the third still serves it."""
    vol = start_mounted_volume(tmp_path / "m", timeout=10.0)
    grid = vol.grid
    try:
        (vol.path / "docs").mkdir()
        write_durably(vol.path / "docs" / "v1", b"one")
        fsync_dir(vol.path / "docs")
        for i in (3, 4):
            grid.storage[i].kill()
        wait_listed_offline(vol.home, grid, [3, 4])
        write_durably(vol.path / "docs" / "v2", os.urandom(50))  # 3 of 5 replicas up: a majority
        vol.kill()
        vol.drop_cache()
        # Two of the peers that took v2 die; the two that missed it come back.
        for i in (0, 1):
            grid.storage[i].kill()
        for i in (3, 4):
            grid.restart_peer(i)
        other = restore_home(vol.home, grid, tmp_path / "other")
        assert {tuple(ls(other, "/docs")) for _ in range(4)} == {("v1", "v2")}
    finally:
        vol.close()


def test_a_peer_gone_for_good_leaves_the_membership_and_folders_move_off_it(tmp_path: Path) -> None:
    """Membership, not liveness, places slots; when the coordinator drops a peer from it (silent past
    --membership-grace), reads re-replicate folders to the next peer, so two later losses are survived."""
    import trio

    from cryptree.identity import new_seed
    from pluto_fs.grid.localgrid import LocalGrid
    from pluto_fs.home import Config, Home
    from pluto_fs.volume.tree import Tree
    from pluto_fs.volume.volume import open_volume
    from transport.protocol.peer_id import parse_peer_id


    grid = LocalGrid(tmp_path / "grid", peers=6, capacity="1G", heartbeat=0.5, membership_grace=3.0)
    grid.start()
    try:
        home = Home(tmp_path / "home")
        home.create(new_seed(), Config(coordinator=grid.coordinator.address))
        wait_until(lambda: len(peer_alive(home)) == 6, what="six peers registered")
        src = tmp_path / "src"
        (src / "docs").mkdir(parents=True)
        (src / "docs" / "a").write_bytes(b"kept")
        pluto(home, "put", str(src), "/")

        async def replicas() -> list[int]:
            async with open_volume(home) as vol:
                cap, _ = await Tree(vol, vol.keys.root).open_dir("/docs")
                primary, _ = await vol.slots.placement(cap.writer)
            index = {parse_peer_id(p.peer_id): i for i, p in enumerate(grid.storage)}
            return [index[p] for p in primary]

        holders = trio.run(replicas)
        assert len(holders) == 5
        gone, *others = holders
        grid.storage[gone].kill()
        address = grid.storage[gone].address
        wait_until(lambda: not any(p["member"] for p in json.loads(pluto(home, "peers", "--json").stdout)
                                   if p["address"] == address), what="the silent peer leaves the membership")
        assert ls(home, "/docs") == ["a"]  # read repair copies the folder to the peer that took its place
        for i in others[:2]:
            grid.storage[i].kill()
        assert ls(home, "/docs") == ["a"]  # 3 of the new 5 still answer: a majority
    finally:
        grid.stop()
