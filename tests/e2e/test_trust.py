"""Strangers who lie, vanish or cheat: audits, reputation, repair and garbage collection."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cryptree.identity import new_seed
from pluto_fs.health import check
from pluto_fs.home import Config, Home
from pluto_fs.localgrid import LocalGrid
from pluto_fs.tree import Tree
from pluto_fs.volume import open_volume
from transport.peer_id import parse_peer_id

from treegen import assert_same_tree, make_tree


@pytest.fixture
def grid6(tmp_path: Path) -> Iterator[LocalGrid]:
    """Six peers (one more than n, so repair has somewhere to go); fast heartbeats and audit reports."""
    g = LocalGrid(tmp_path / "grid", peers=6, capacity="1G", heartbeat=0.3, audit_report_interval=0.01)
    try:
        g.start()
        yield g
    finally:
        g.stop()


def _home(tmp_path: Path, grid: LocalGrid) -> Home:
    home = Home(tmp_path / "home")
    home.create(new_seed(), Config(coordinator=grid.coordinator.address))
    return home


async def _wait(vol, n: int) -> None:
    with trio.fail_after(20):
        while len(await vol.net.find_peers(n)) < n:
            await trio.sleep(0.2)


def _store(home: Home, src: Path) -> None:
    async def run() -> None:
        async with open_volume(home) as vol:
            await _wait(vol, 6)
            await Tree(vol, vol.keys.root).upload(src)

    trio.run(run)


def _peer_store(grid: LocalGrid, i: int) -> Path:
    return grid.root / f"peer{i}"


def test_a_peer_that_drops_half_its_fragments_is_caught_and_gets_no_new_data(grid6: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 60, seed=7, big=(12 << 20,))
    home = _home(tmp_path, grid6)
    _store(home, src)
    # the cheat: peer 2 throws away half its fragment files but keeps its index (and keeps answering)
    cheat = parse_peer_id(grid6.storage[2].peer_id)
    files = sorted(p for p in (_peer_store(grid6, 2) / "fragments").rglob("*") if p.is_file())
    assert len(files) >= 4
    for f in random.Random(1).sample(files, len(files) // 2):
        f.unlink()

    async def run() -> int:
        async with open_volume(home) as vol:
            for rounds in range(1, 11):
                await check(vol, vol.keys.root)
                record = (await vol.net.peers(refresh=True))[cheat]
                if not record.eligible:
                    break
            assert await vol.net.coordinator.ping()
            for _ in range(30):  # no new placement goes to the cheat
                offered = await vol.net.find_peers(5)
                assert cheat not in {p.id for p in offered}
            return rounds

    rounds = trio.run(run)
    assert rounds <= 5, f"the cheating peer was still eligible after {rounds} audit rounds"


def test_a_lost_peer_is_repaired_away_then_another_loss_is_survived(grid6: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 80, seed=8, big=(10 << 20,))
    home = _home(tmp_path, grid6)
    _store(home, src)
    grid6.storage[0].kill()  # gone for good

    async def repair() -> None:
        async with open_volume(home) as vol:
            dead = parse_peer_id(grid6.storage[0].peer_id)
            with trio.fail_after(20):
                while (await vol.net.peers(refresh=True))[dead].alive:
                    await trio.sleep(0.2)
            first = await check(vol, vol.keys.root, repair=True)
            assert first.packs_degraded > 0 and first.packs_repaired == first.packs_degraded, first
            assert first.problems == []
            again = await check(vol, vol.keys.root)
            assert again.packs_degraded == 0, again  # every pack back at n healthy fragments

    trio.run(repair)
    grid6.storage[3].kill()  # a second permanent loss

    async def read_all() -> None:
        async with open_volume(home) as vol:
            await Tree(vol, vol.keys.root).download("/", tmp_path / "out")

    trio.run(read_all)
    assert_same_tree(src, tmp_path / "out")


def test_a_peer_serving_corrupted_fragments_is_caught_and_loses_reputation(grid6: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 30, seed=9, big=(8 << 20,))
    home = _home(tmp_path, grid6)
    _store(home, src)
    bad = 1
    for f in (_peer_store(grid6, bad) / "fragments").rglob("*"):
        if f.is_file() and f.stat().st_size:
            data = bytearray(f.read_bytes())
            for i in range(0, len(data), 4096):
                data[i] ^= 0x5A
            f.write_bytes(bytes(data))

    async def run() -> tuple[float, float]:
        async with open_volume(home) as vol:
            peer = parse_peer_id(grid6.storage[bad].peer_id)
            before = (await vol.net.peers(refresh=True))[peer]
            # fetch with primaries first, so the bad peer is asked whenever it holds a primary
            await Tree(vol, vol.keys.root).download("/", tmp_path / "out")
            await check(vol, vol.keys.root)
            after = (await vol.net.peers(refresh=True))[peer]
            return before.reputation, after.reputation, after.audits_failed

    before, after, failed = trio.run(run)
    assert_same_tree(src, tmp_path / "out")  # never a bad byte passed up
    assert failed > 0 and after < before


def test_gc_releases_packs_nothing_refers_to(grid6: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(6 << 20))
    home = _home(tmp_path, grid6)
    _store(home, src)
    (src / "big.bin").write_bytes(os.urandom(6 << 20))  # replaced: the old packs are now garbage
    _store(home, src)

    def stored_bytes() -> int:
        return sum(p.stat().st_size for i in range(6) for p in (_peer_store(grid6, i) / "fragments").rglob("*") if p.is_file())

    before = stored_bytes()

    async def run():
        async with open_volume(home) as vol:
            return await check(vol, vol.keys.root, gc=True, gc_min_age=0)

    report = trio.run(run)
    assert report.packs_collected >= 1
    after = stored_bytes()
    assert after < before - (8 << 20), f"{before} -> {after}: the old 10 MiB of fragments should be gone"

    async def read_back() -> None:
        async with open_volume(home) as vol:
            await Tree(vol, vol.keys.root).download("/", tmp_path / "out")

    trio.run(read_back)
    assert_same_tree(src, tmp_path / "out")


def test_the_mount_repairs_in_the_background_and_shows_it_in_status(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys
    import time

    from pluto_fs.testing import start_mounted_volume

    vol = start_mounted_volume(tmp_path / "m", peers=7)
    try:
        config = vol.home.config()
        config.audit_interval = 1.0
        vol.home.save_config(config)
        vol.unmount()
        vol.mount()
        data = os.urandom(5 << 20)
        with open(vol.path / "precious.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # The background threshold is k + repair_margin (2 by default, docs/SIMULATION.md): losing two
        # of a pack's five holders leaves 3 < 5 and must trigger a rebuild back to 5 on spare peers.
        holders = [i for i in range(7) if any(p.is_file() for p in (vol.grid.root / f"peer{i}" / "fragments").rglob("*"))]
        assert len(holders) == 5
        vol.grid.storage[holders[0]].kill()
        vol.grid.storage[holders[1]].kill()
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run([sys.executable, "-m", "pluto_fs.cli", "status", "--json", "--home",
                                  str(vol.home.path)], capture_output=True, text=True, timeout=60)
            health = json.loads(res.stdout)["health"]
            if health.get("repaired", 0) >= 1:
                break
            assert time.monotonic() < deadline, f"no background repair within 60 s: {health}"
            time.sleep(1)
        vol.grid.storage[holders[2]].kill()  # a third loss after the repair
        vol.unmount()
        vol.drop_cache()
        vol.mount()
        assert (vol.path / "precious.bin").read_bytes() == data
    finally:
        vol.close()
