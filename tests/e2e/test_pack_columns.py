"""Every fragment column of a pack: recorded only when a peer acknowledged it, placed promptly
when it was not, and repaired honestly (issue 10, items 3 and 4; promises in docs/DATA_PATH.md
"When a write counts as stored" and docs/TRUST.md "Repair").

Real peer processes on loopback, a real mount where the mount is what is tested.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio
from test_trust import _fragments_on, _home, _peer_store, _wait_for

from cryptree.caps import ReadCap
from cryptree.merkle import merkle_root
from pluto_fs.grid.localgrid import LocalGrid, child_env
from pluto_fs.grid.testing import start_mounted_volume
from pluto_fs.home import Home
from pluto_fs.store.packs import PackLayout, SegmentLayout
from pluto_fs.volume.health import PackHealth, repair_plan
from pluto_fs.volume.volume import open_volume
from transport.protocol.peer_id import parse_peer_id

# ---- helpers -------------------------------------------------------------------


def _pluto(home: Home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", *args, "--home", str(home.path)],
                          capture_output=True, text=True, timeout=180, env=child_env())


def _status(home: Home) -> dict:
    res = _pluto(home, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _wait_status(home: Home, ok: Callable[[dict], bool], timeout: float, what: str) -> dict:
    """Poll `pluto status --json` (the mount rewrites its status every second) until `ok` holds."""
    deadline = time.monotonic() + timeout
    while True:
        status = _status(home)
        if ok(status):
            return status
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s; status: {status}"
        time.sleep(0.5)


def _records(home: Home) -> list[tuple[bytes, tuple[bytes | None, ...]]]:
    """(pack id, peer per column) of every pack this user logged, read from the network."""

    async def run() -> list[tuple[bytes, tuple[bytes | None, ...]]]:
        async with open_volume(home) as vol:
            assert vol.packs.log is not None
            out = []
            for writer, _nonce, read_key, _created in vol.packs.log.all():
                _, layout, peers = await vol.packs.fetch_record(ReadCap("file", writer, read_key))
                out.append((layout.pack_id, peers))
            return out

    return trio.run(run)


def _peer_ids(grid: LocalGrid) -> list[bytes]:
    return [parse_peer_id(p.peer_id) for p in grid.storage]


def _wait_listed(home: Home, peer: bytes, alive: bool) -> None:
    """Until the coordinator lists `peer` as alive (or not)."""

    async def run() -> None:
        async with open_volume(home) as vol:
            await _wait_for(vol, peer, lambda r: r.alive is alive)

    trio.run(run)


def _write_and_fsync(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _all_verify(grid: LocalGrid, i: int) -> bool:
    """Whether every fragment file on peer `i` hashes to its name (its id)."""
    return all(merkle_root(f.read_bytes()) == bytes.fromhex(f.name) for f in _fragments_on(grid, i))


def _wipe_but_keep_key(grid: LocalGrid, i: int) -> None:
    """A disk replaced under a peer that kept its key: everything but peer.key is gone."""
    store = _peer_store(grid, i)
    for entry in store.iterdir():
        if entry.name != "peer.key":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


# ---- a write counts as stored only for the columns peers acknowledged -----------


def test_a_column_cut_off_by_a_frozen_peer_is_placed_when_it_thaws_and_survives_two_losses(tmp_path: Path) -> None:
    vol = start_mounted_volume(tmp_path / "m", timeout=120.0)
    try:
        (vol.path / "warm").write_bytes(b"connections to every peer are open")
        os.sync()
        ids = _peer_ids(vol.grid)
        frozen = 2
        vol.grid.storage[frozen].proc.send_signal(signal.SIGSTOP)
        try:
            data = os.urandom(2 << 20)
            start = time.monotonic()
            _write_and_fsync(vol.path / "precious.bin", data)  # happy = 4 columns placed: durable
            assert time.monotonic() - start < 30, "fsync waited for the frozen peer"
            # The column that never reached the frozen peer is not counted as stored anywhere.
            _wait_status(vol.home, lambda s: s["packs_short"] >= 1, 20, "status shows the short pack")
            for _, peers in _records(vol.home):
                assert peers.count(None) == 1 and ids[frozen] not in peers, peers
        finally:
            vol.grid.storage[frozen].proc.send_signal(signal.SIGCONT)
        # Without a `pluto check` and long before any audit round, the mount places the column.
        _wait_status(vol.home, lambda s: s["packs_short"] == 0, 90, "the missing column is placed")
        records = _records(vol.home)
        assert records and all(None not in peers and len(set(peers)) == 5 for _, peers in records), records
        # Two other holders die for good: the thawed peer's column is what makes the file readable.
        others = [i for i in range(5) if i != frozen][:2]
        for i in others:
            vol.grid.storage[i].kill()
        vol.remount_fresh()
        assert (vol.path / "precious.bin").read_bytes() == data
    finally:
        vol.close()


def test_with_four_peers_up_a_pack_names_four_distinct_peers_and_the_fifth_column_follows_the_peer_back(
        tmp_path: Path) -> None:
    vol = start_mounted_volume(tmp_path / "m")
    try:
        ids = _peer_ids(vol.grid)
        down = 4
        vol.grid.storage[down].kill()
        _wait_listed(vol.home, ids[down], alive=False)
        data = os.urandom(600_000)
        _write_and_fsync(vol.path / "four.bin", data)  # 4 of 5 eligible peers: happy, so durable
        records = _records(vol.home)
        assert records
        for _, peers in records:
            named = [p for p in peers if p is not None]
            assert peers.count(None) == 1 and len(set(named)) == 4 == len(named), peers  # nobody named twice
            assert ids[down] not in peers
        _wait_status(vol.home, lambda s: s["packs_short"] == len(records), 10, "status counts the short packs")
        vol.grid.restart_peer(down)
        start = time.monotonic()
        _wait_status(vol.home, lambda s: s["packs_short"] == 0, 60, "the fifth column is placed on the peer back")
        placed_after = time.monotonic() - start
        for _, peers in _records(vol.home):
            assert None not in peers and set(peers) == set(ids), peers
        assert placed_after < 45, f"the fifth column took {placed_after:.0f} s"
        assert (vol.path / "four.bin").read_bytes() == data
    finally:
        vol.close()


def _health(k: int, n: int, states: str) -> PackHealth:
    """A pack whose column c is healthy ('h'), offline ('o'), lost ('l') or missing ('m': no peer holds it)."""
    layout = PackLayout(bytes(32), 100, k, n, 100, (SegmentLayout(100, tuple(bytes([c]) * 32 for c in range(n))),))
    peers = tuple(None if s == "m" else bytes([c]) * 32 for c, s in enumerate(states))
    return PackHealth(None, bytes(16), 1, layout, peers, [s == "h" for s in states], [s == "o" for s in states],
                      [s == "m" for s in states])


def test_a_missing_column_is_rebuilt_whatever_the_grace_and_the_threshold() -> None:
    # 3-of-5 with the background threshold k + 2 = 5, and 8-of-16 repairing below 12
    assert repair_plan(_health(3, 5, "hhhhm"), 5) == [4]
    assert repair_plan(_health(3, 5, "hhhom"), 5) == [3, 4]  # 3 reachable < k + 1: everything not healthy
    # the offline column waits for its peer; the missing one cannot
    assert repair_plan(_health(3, 6, "hhhhom"), 5) == [5]
    assert repair_plan(_health(3, 5, "hhhmm"), 5) == [3, 4]
    assert repair_plan(_health(8, 16, "h" * 14 + "om"), 12) == [15]  # 15 durable, above 12: still placed
    assert repair_plan(_health(8, 16, "h" * 14 + "oo"), 12) == []


# ---- repair: the peer that lost a column, distinct peers, honest results -------------


def _stored_one_file(grid: LocalGrid, tmp_path: Path, size: int) -> tuple[Home, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "only.bin").write_bytes(os.urandom(size))
    home = _home(tmp_path, grid)
    _store_on(home, src, len(grid.storage))
    return home, src


def _store_on(home: Home, src: Path, peers: int) -> None:
    from pluto_fs.volume.tree import Tree

    async def run() -> None:
        async with open_volume(home) as vol:
            with trio.fail_after(20):
                while len(await vol.net.find_peers(peers)) < peers:  # noqa: ASYNC110 (peer processes registering)
                    await trio.sleep(0.2)
            await Tree(vol, vol.keys.root).upload(src)

    trio.run(run)


def test_a_wiped_peer_back_with_its_key_gets_its_columns_back(grid: LocalGrid, tmp_path: Path) -> None:
    home, _ = _stored_one_file(grid, tmp_path, 3 << 20)
    wiped = 1
    wiped_id = _peer_ids(grid)[wiped]
    assert _fragments_on(grid, wiped)
    grid.storage[wiped].kill()
    _wipe_but_keep_key(grid, wiped)
    grid.restart_peer(wiped)
    _wait_listed(home, wiped_id, alive=True)
    # Five peers, five columns: the only place for the lost column is the peer that lost it.
    res = _pluto(home, "check", "--repair", "--now", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["packs_repaired"] == report["packs"] >= 1 and report["not_fixed"] == [], report
    assert _fragments_on(grid, wiped) and _all_verify(grid, wiped)
    again = _pluto(home, "check", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["packs_degraded"] == 0, again.stdout
    for _, peers in _records(home):
        assert len(set(peers)) == 5 and wiped_id in peers, peers


def test_a_repair_that_cannot_place_every_column_exits_1_and_names_the_pack(grid6: LocalGrid, tmp_path: Path) -> None:
    home, _ = _stored_one_file(grid6, tmp_path, 300_000)
    ids = _peer_ids(grid6)
    (pack_id, peers), = _records(home)
    holders = [ids.index(p) for p in peers]
    for i in holders[:2]:  # two of the pack's five peers gone: one spare peer left for two columns
        grid6.storage[i].kill()
    for i in holders[:2]:
        _wait_listed(home, ids[i], alive=False)
    res = _pluto(home, "check", "--repair", "--now")
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if pack_id.hex()[:16] in line]
    assert len(lines) == 1 and "only.bin" in lines[0] and "column" in lines[0], res.stdout
    assert "repaired 0 packs" in res.stdout, res.stdout
    # The one spare got its column; the other column waits, and a second run says so again.
    (_, after), = _records(home)
    assert sum(a != b for a, b in zip(peers, after, strict=True)) == 1 and len(set(after)) == 5, (peers, after)
    res = _pluto(home, "check", "--repair", "--now", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["packs_repaired"] == 0, report
    [entry] = report["not_fixed"]
    assert entry["pack"] == pack_id.hex() and entry["file"] == "/only.bin" and len(entry["columns"]) == 1, entry
    assert entry["reason"], entry


def test_a_repair_onto_a_peer_holding_a_corrupt_copy_leaves_a_verified_fragment(
        grid: LocalGrid, tmp_path: Path) -> None:
    home, _ = _stored_one_file(grid, tmp_path, 2 << 20)
    bad = 3
    files = _fragments_on(grid, bad)
    assert files
    for f in files:
        data = bytearray(f.read_bytes())
        for i in range(0, len(data), 4096):
            data[i] ^= 0x5A
        f.write_bytes(bytes(data))
    assert not _all_verify(grid, bad)
    res = _pluto(home, "check", "--repair", "--now", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["packs_repaired"] >= 1, res.stdout
    assert _fragments_on(grid, bad) and _all_verify(grid, bad)
    again = _pluto(home, "check", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["packs_degraded"] == 0, again.stdout
