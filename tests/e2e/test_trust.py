"""Strangers who lie, vanish or cheat: audits, reputation, repair and garbage collection."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio
from treegen import assert_same_tree, make_tree

from cryptree.identity import new_seed
from pluto_fs.grid.localgrid import LocalGrid, child_env
from pluto_fs.home import Config, Home
from pluto_fs.store.packs import PackLayout, SegmentLayout
from pluto_fs.volume.health import CheckReport, PackHealth, PeerState, check, peer_state, repair_plan
from pluto_fs.volume.tree import Tree
from pluto_fs.volume.volume import open_volume
from transport.coordinator.client import PeerRecord
from transport.protocol.peer_id import parse_peer_id


def _home(tmp_path: Path, grid: LocalGrid) -> Home:
    home = Home(tmp_path / "home")
    home.create(new_seed(), Config(coordinator=grid.coordinator.address))
    return home


async def _wait(vol, n: int) -> None:
    with trio.fail_after(20):
        while len(await vol.net.find_peers(n)) < n:  # noqa: ASYNC110 (peer processes registering)
            await trio.sleep(0.2)


def _store(home: Home, src: Path) -> None:
    async def run() -> None:
        async with open_volume(home) as vol:
            await _wait(vol, 6)
            await Tree(vol, vol.keys.root).upload(src)

    trio.run(run)


def _stored_tree(grid: LocalGrid, tmp_path: Path, files: int, seed: int, big: int) -> tuple[Path, Home]:
    """A generated tree of `files` files plus one of `big` bytes, stored by a fresh user: (source, home)."""
    src = tmp_path / "src"
    make_tree(src, files, seed=seed, big=(big,))
    home = _home(tmp_path, grid)
    _store(home, src)
    return src, home


def _kill_busiest_holder(grid: LocalGrid) -> tuple[int, bytes]:
    """kill -9 the peer holding the most fragments; return its index and id."""
    i = _busiest_holder(grid)
    grid.storage[i].kill()
    return i, parse_peer_id(grid.storage[i].peer_id)


def _peer_store(grid: LocalGrid, i: int) -> Path:
    return grid.root / f"peer{i}"


def _fragments_on(grid: LocalGrid, i: int) -> list[Path]:
    return sorted(p for p in (_peer_store(grid, i) / "fragments").rglob("*") if p.is_file())


def _busiest_holder(grid: LocalGrid) -> int:
    """The peer holding the most fragments: placement is random, so a fixed index may hold none."""
    return max(range(len(grid.storage)), key=lambda i: len(_fragments_on(grid, i)))


def test_a_peer_that_drops_half_its_fragments_is_caught_and_gets_no_new_data(grid6: LocalGrid, tmp_path: Path) -> None:
    _src, home = _stored_tree(grid6, tmp_path, 60, seed=7, big=12 << 20)
    # the cheat throws away half its fragment files but keeps its index (and keeps answering)
    cheater = _busiest_holder(grid6)
    cheat = parse_peer_id(grid6.storage[cheater].peer_id)
    files = _fragments_on(grid6, cheater)
    assert len(files) >= 4
    for f in random.Random(1).sample(files, len(files) // 2):
        f.unlink()

    async def run() -> int:
        async with open_volume(home) as vol:
            rounds = 0
            while rounds < 10:
                rounds += 1
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
    src, home = _stored_tree(grid6, tmp_path, 80, seed=8, big=10 << 20)
    lost, dead = _kill_busiest_holder(grid6)  # gone for good

    async def repair() -> None:
        async with open_volume(home) as vol:
            with trio.fail_after(20):
                while (await vol.net.peers(refresh=True))[dead].alive:  # noqa: ASYNC110 (a killed process)
                    await trio.sleep(0.2)
            first = await check(vol, vol.keys.root, repair=True, grace=0)  # no grace: gone is gone
            assert first.packs_degraded > 0 and first.packs_repaired == first.packs_degraded, first
            assert first.problems == []
            again = await check(vol, vol.keys.root)
            assert again.packs_degraded == 0, again  # every pack back at n healthy fragments

    trio.run(repair)
    grid6.storage[(lost + 3) % 6].kill()  # a second permanent loss

    async def read_all() -> None:
        async with open_volume(home) as vol:
            await Tree(vol, vol.keys.root).download("/", tmp_path / "out")

    trio.run(read_all)
    assert_same_tree(src, tmp_path / "out")


def test_a_peer_serving_corrupted_fragments_is_caught_and_loses_reputation(grid6: LocalGrid, tmp_path: Path) -> None:
    src, home = _stored_tree(grid6, tmp_path, 30, seed=9, big=8 << 20)
    bad = _busiest_holder(grid6)
    for f in _fragments_on(grid6, bad):
        if f.stat().st_size:
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
        return sum(p.stat().st_size for i in range(6)
                   for p in (_peer_store(grid6, i) / "fragments").rglob("*") if p.is_file())

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

    from pluto_fs.grid.testing import start_mounted_volume

    vol = start_mounted_volume(tmp_path / "m", peers=7)
    try:
        # Folders live on a fixed replica set and need a majority of it (docs/DATA_PATH.md, "Mutable
        # slots"): surviving three peers gone at once takes seven replicas, as packs take repair.
        vol.reconfigure(audit_interval=1.0, slot_replicas=7)
        data = os.urandom(5 << 20)
        with open(vol.path / "precious.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # Two of a pack's five holders gone leaves 3 reachable, fewer than k + 1: one more absence and
        # the pack is unreadable, so it is rebuilt back to 5 on spare peers at once, whatever the
        # 72 h repair grace says about peers that are merely offline (docs/TRUST.md).
        holders = [i for i in range(7)
                   if any(p.is_file() for p in (vol.grid.root / f"peer{i}" / "fragments").rglob("*"))]
        assert len(holders) == 5
        vol.grid.storage[holders[0]].kill()
        vol.grid.storage[holders[1]].kill()
        deadline = time.monotonic() + 60
        while True:
            res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", "status", "--json", "--home",
                                  str(vol.home.path)], capture_output=True, text=True, timeout=60)
            health = json.loads(res.stdout)["health"]
            if health.get("repaired", 0) >= 1:
                break
            assert time.monotonic() < deadline, f"no background repair within 60 s: {health}"
            time.sleep(1)
        vol.grid.storage[holders[2]].kill()  # a third loss after the repair
        vol.remount_fresh()
        assert (vol.path / "precious.bin").read_bytes() == data
    finally:
        vol.close()


# ---- the repair grace period -------------------------------------------------


def _record(alive: bool, offline_for: float | None, disqualified: bool = False) -> PeerRecord:
    return PeerRecord(id=bytes(32), address="127.0.0.1:1", capacity=1, free=1, used=0, alive=alive, uptime=1.0,
                      audits_ok=0, audits_failed=0, reputation=0.5, eligible=alive and not disqualified,
                      offline_for=offline_for, disqualified=disqualified)


def test_peer_states_follow_the_grace() -> None:
    grace = 3600.0
    assert peer_state(_record(True, 0.0), grace) is PeerState.HEALTHY
    assert peer_state(_record(False, 60.0), grace) is PeerState.OFFLINE
    assert peer_state(_record(False, 3600.0), grace) is PeerState.LOST
    assert peer_state(_record(False, 60.0), 0.0) is PeerState.LOST  # grace 0: the rule without a grace period
    assert peer_state(_record(False, None), grace) is PeerState.LOST  # an older coordinator cannot say how long
    assert peer_state(_record(True, 0.0, disqualified=True), grace) is PeerState.LOST
    assert peer_state(None, grace) is PeerState.LOST  # the coordinator no longer knows it


def _health(k: int, n: int, states: str) -> PackHealth:
    """A pack whose column c is healthy ('h'), on an offline peer ('o') or lost ('l')."""
    layout = PackLayout(bytes(32), 100, k, n, 100, (SegmentLayout(100, tuple(bytes([c]) * 32 for c in range(n))),))
    return PackHealth(None, bytes(24), 1, layout, tuple(bytes([c]) * 32 for c in range(n)),
                      [s == "h" for s in states], [s == "o" for s in states])


def test_repair_plan_waits_for_offline_peers_but_not_at_the_edge_of_unreadability() -> None:
    # 3-of-5, background threshold k + 2 = 5
    assert repair_plan(_health(3, 5, "hhhho"), 5) == []  # a reboot: wait
    assert repair_plan(_health(3, 5, "hhhhl"), 5) == [4]  # a lost peer: rebuild it
    assert repair_plan(_health(3, 5, "hhhoo"), 5) == [3, 4]  # 3 reachable < k + 1: grace or not, rebuild
    assert repair_plan(_health(3, 5, "hhhol"), 5) == [3, 4]  # likewise
    assert repair_plan(_health(3, 5, "hhool"), 5) == [2, 3, 4]  # too few to rebuild now; check reports it
    # 8-of-16 repairing below 12 (docs/SIMULATION.md): four offline and two lost peers leave 14 durable
    assert repair_plan(_health(8, 16, "h" * 10 + "oooo" + "ll"), 12) == []
    assert repair_plan(_health(8, 16, "h" * 9 + "oo" + "lllll"), 12) == [11, 12, 13, 14, 15]  # 11 durable
    # `pluto check --repair` by hand: threshold n; the lost column is rebuilt, the offline one waits
    assert repair_plan(_health(4, 8, "hhhhhhol"), 8) == [7]
    assert repair_plan(_health(4, 8, "hhhhhhoo"), 8) == []


def _all_fragment_files(grid: LocalGrid) -> dict[str, int]:
    """Every fragment file on every peer (path relative to the grid, size): what repair would change."""
    return {str(p.relative_to(grid.root)): p.stat().st_size
            for i in range(len(grid.storage)) for p in (_peer_store(grid, i) / "fragments").rglob("*") if p.is_file()}


async def _wait_for(vol, peer: bytes, ok: Callable[[PeerRecord], bool], timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not ok((await vol.net.peers(refresh=True))[peer]):  # noqa: ASYNC110 (another process's state)
            await trio.sleep(0.1)


def _cli_json(home: Home, *args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", *args, "--json", "--home", str(home.path)],
                         capture_output=True, text=True, timeout=120, env=child_env())
    assert res.returncode in (0, 1), res.stderr
    return json.loads(res.stdout)


def _peer_states(home: Home, grid: LocalGrid) -> list[str]:
    by_address = {p["address"]: p["state"] for p in _cli_json(home, "status")["peers"]}
    return [by_address[p.address] for p in grid.storage]


def test_a_peer_offline_within_the_grace_keeps_its_data_and_costs_no_repair(grid6: LocalGrid, tmp_path: Path) -> None:
    _src, home = _stored_tree(grid6, tmp_path, 20, seed=10, big=6 << 20)
    grace = home.config().repair_grace
    assert grace == 72 * 3600  # the default, from docs/SIMULATION.md
    away = _busiest_holder(grid6)
    away_id = parse_peer_id(grid6.storage[away].peer_id)
    before = _all_fragment_files(grid6)
    grid6.storage[away].kill()  # a reboot, as far as anyone can tell

    async def background_round() -> CheckReport:
        async with open_volume(home) as vol:
            # what the mount's health loop runs: repair below k + repair_margin, with the grace
            report = await check(vol, vol.keys.root, repair=True, repair_below=vol.packs.k + 2, grace=grace)
            assert vol.packs.stats.fragment_bytes_sent == 0, "no fragment may move"
            return report

    async def wait_until(alive: bool) -> None:
        async with open_volume(home) as vol:
            await _wait_for(vol, away_id, lambda r: r.alive is alive)

    trio.run(wait_until, False)
    away_report = trio.run(background_round)
    assert away_report.packs_waiting > 0 and away_report.fragments_offline > 0, away_report
    assert away_report.packs_repaired == away_report.fragments_rebuilt == 0 and away_report.problems == []
    assert away_report.packs_unreadable == 0
    states = _peer_states(home, grid6)
    assert states[away] == "offline" and states.count("healthy") == 5, states
    # `pluto check --repair` by hand also waits for it
    by_hand = _cli_json(home, "check", "--repair")
    assert by_hand["packs_repaired"] == 0 and by_hand["packs_waiting"] > 0, by_hand
    assert _all_fragment_files(grid6) == before

    grid6.restart_peer(away)
    trio.run(wait_until, True)
    back = trio.run(background_round)
    assert back.packs_degraded == back.packs_waiting == back.fragments_offline == back.packs_repaired == 0, back
    assert _peer_states(home, grid6) == ["healthy"] * 6
    assert _all_fragment_files(grid6) == before  # nothing was rebuilt, nothing needs collecting


def test_a_peer_offline_longer_than_the_grace_is_repaired_to_n(grid6: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 20, seed=11, big=(6 << 20,))
    home = _home(tmp_path, grid6)
    config = home.config()
    config.repair_grace = 4.0  # long enough for the first check to finish inside it on a busy machine
    home.save_config(config)
    _store(home, src)
    away, away_id = _kill_busiest_holder(grid6)

    async def within_grace() -> CheckReport:
        async with open_volume(home) as vol:
            await _wait_for(vol, away_id, lambda r: not r.alive)
            return await check(vol, vol.keys.root, repair=True, repair_below=vol.packs.k + 2, grace=config.repair_grace)

    early = trio.run(within_grace)
    assert early.packs_repaired == 0 and early.packs_waiting > 0, early

    async def past_grace() -> None:
        async with open_volume(home) as vol:
            await _wait_for(vol, away_id, lambda r: (r.offline_for or 0) > config.repair_grace)

    trio.run(past_grace)
    assert _peer_states(home, grid6)[away] == "lost"
    repaired = _cli_json(home, "check", "--repair")  # by hand, with the configured grace
    assert repaired["packs_repaired"] == early.packs_waiting and repaired["problems"] == [], repaired

    async def verify() -> CheckReport:
        async with open_volume(home) as vol:
            return await check(vol, vol.keys.root, grace=config.repair_grace)

    again = trio.run(verify)
    assert again.packs_degraded == again.fragments_offline == 0, again  # every pack back at n healthy fragments
    trio.run(_download_all, home, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")


def test_check_repair_now_does_not_wait_for_the_grace(grid6: LocalGrid, tmp_path: Path) -> None:
    _src, home = _stored_tree(grid6, tmp_path, 10, seed=12, big=4 << 20)
    _away, away_id = _kill_busiest_holder(grid6)

    async def wait_gone() -> None:
        async with open_volume(home) as vol:
            await _wait_for(vol, away_id, lambda r: not r.alive)

    trio.run(wait_gone)
    now = _cli_json(home, "check", "--repair", "--now")
    assert now["packs_repaired"] > 0 and now["packs_waiting"] == 0 and now["problems"] == [], now
    after = _cli_json(home, "check")  # with the 72 h grace: the offline peer holds nothing of ours any more
    assert after["packs_degraded"] == after["fragments_offline"] == 0, after


async def _download_all(home: Home, out: Path) -> None:
    async with open_volume(home) as vol:
        await Tree(vol, vol.keys.root).download("/", out)
