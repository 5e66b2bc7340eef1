"""The volume engine over a real 5-peer grid: round trips, restore, failures, secrecy."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from treegen import assert_same_tree, make_tree

from cryptree.caps import WriteCap
from cryptree.chunks import iter_chunks, seal_chunk
from cryptree.dirnode import DirEntry
from cryptree.errors import CapabilityError
from cryptree.identity import new_seed, seed_to_phrase
from pluto_fs.errors import NotEnoughPeers, PlutoError
from pluto_fs.grid.localgrid import LocalGrid
from pluto_fs.home import Config, Home
from pluto_fs.volume.tree import Tree
from pluto_fs.volume.volume import open_volume


def _home(path: Path, grid: LocalGrid, seed: bytes | None = None) -> Home:
    home = Home(path)
    home.create(seed or new_seed(), Config(coordinator=grid.coordinator.address))
    return home


async def _wait_peers(vol, n: int = 5) -> None:
    with trio.fail_after(20):
        while len(await vol.net.find_peers(n)) < n:  # noqa: ASYNC110 (peer processes registering)
            await trio.sleep(0.2)


def _upload(home: Home, src: Path, remote: str = "/") -> None:
    async def run() -> None:
        async with open_volume(home) as vol:
            await _wait_peers(vol)
            await Tree(vol, vol.keys.root).upload(src, remote)

    trio.run(run)


def _download(home: Home, out: Path, remote: str = "/") -> None:
    async def run() -> None:
        async with open_volume(home) as vol:
            await Tree(vol, vol.keys.root).download(remote, out)

    trio.run(run)


def test_two_thousand_files_round_trip_and_restore_from_words(grid: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    total = make_tree(src, 2000)
    assert total > 80 << 20
    seed = new_seed()
    home = _home(tmp_path / "home", grid, seed)
    _upload(home, src)
    _download(home, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")

    # a machine that never saw this user: only the 24 words, through the CLI
    fresh = tmp_path / "fresh-home"
    words = seed_to_phrase(seed)
    res = subprocess.run(
        [sys.executable, "-m", "pluto_fs.cli.main", "restore", "--home", str(fresh),
         "--coordinator", grid.coordinator.address],
        input=words, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", "get", "/", str(tmp_path / "restored"),
                          "--home", str(fresh)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert_same_tree(src, tmp_path / "restored")


def test_reads_survive_two_lost_peers_and_fail_clearly_with_three(grid: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 120, seed=2, big=(6 << 20,))
    home = _home(tmp_path / "home", grid)
    _upload(home, src)
    grid.storage[0].kill()
    grid.storage[3].kill()
    _download(home, tmp_path / "out2")
    assert_same_tree(src, tmp_path / "out2")
    grid.storage[4].kill()
    start = time.monotonic()
    with pytest.raises(NotEnoughPeers) as err:
        _download(home, tmp_path / "out3")
    assert "not enough peers" in str(err.value) or "peers" in str(err.value)
    assert time.monotonic() - start < 60, "a read with too few peers must fail, not hang"


def test_no_plaintext_or_name_reaches_any_store(grid: LocalGrid, tmp_path: Path) -> None:
    marker = b"MARKER-c0ffee-PLAINTEXT"
    name_marker = "SECRETNAME-d00d"
    src = tmp_path / "src"
    (src / f"{name_marker}-folder").mkdir(parents=True)
    (src / f"{name_marker}-folder" / f"{name_marker}.txt").write_bytes(marker * 50_000)  # compressible, 1 MiB
    (src / "small.txt").write_bytes(marker)  # inline in its directory entry
    (src / "mixed.bin").write_bytes(os.urandom(300_000) + marker + os.urandom(300_000))
    os.symlink(f"{name_marker}-target", src / f"{name_marker}-link")
    home = _home(tmp_path / "home", grid)
    _upload(home, src)
    grid.stop()
    needles = [marker, name_marker.encode(), name_marker.encode("utf-16-le"), marker[:12]]
    stores = [grid.root / "coordinator"] + [grid.root / f"peer{i}" for i in range(5)]
    scanned = 0
    for store in stores:
        for path in store.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                scanned += len(blob)
                for needle in needles:
                    assert needle not in blob, f"{needle!r} in {path}"
    assert scanned > 1 << 20


def test_tampered_fragment_and_slot_are_worked_around(grid: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 40, seed=3, big=(3 << 20,))
    home = _home(tmp_path / "home", grid)
    _upload(home, src)
    # corrupt every fragment on peer 1, and every slot on peer 2 (payload bytes flipped)
    for frag in (grid.root / "peer1" / "fragments").rglob("*"):
        if frag.is_file() and frag.stat().st_size > 0:
            data = bytearray(frag.read_bytes())
            data[len(data) // 2] ^= 0xFF
            frag.write_bytes(bytes(data))
    db = sqlite3.connect(grid.root / "peer2" / "index.sqlite")
    rows = db.execute("SELECT writer, payload FROM slots").fetchall()
    for writer, payload in rows:
        bad = bytearray(payload)
        bad[-1] ^= 0x01
        db.execute("UPDATE slots SET payload=?, seq=seq+100 WHERE writer=?", (bytes(bad), writer))
    db.commit()
    db.close()
    assert rows
    _download(home, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")


def test_read_cap_cannot_write_and_subfolder_cap_cannot_reach_up(grid: LocalGrid, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "public" / "inner").mkdir(parents=True)
    (src / "public" / "inner" / "f.txt").write_bytes(b"inner file")
    (src / "private").mkdir()
    (src / "private" / "secret.txt").write_bytes(b"top secret" * 500)
    home = _home(tmp_path / "home", grid)
    _upload(home, src)

    async def run() -> None:
        async with open_volume(home) as vol:
            owner = Tree(vol, vol.keys.root)
            cap, _ = await owner.open_dir("/public")
            assert isinstance(cap, WriteCap)
            read_only = Tree(vol, cap.read_cap())
            # the subfolder cap sees its subtree...
            assert await read_only.read_file("/inner/f.txt") == b"inner file"
            # ...and nothing above or beside it: no name leads there
            _, top = await read_only.open_dir("/")
            assert [e.name for e in top.entries] == ["inner"]
            with pytest.raises(PlutoError):
                await read_only.read_file("/../private/secret.txt")
            # a read cap cannot write: not through the tree, not by sealing a slot itself
            with pytest.raises(PlutoError):
                await read_only.upload(src / "private", "/")
            with pytest.raises(CapabilityError):
                from cryptree.dirnode import seal_directory
                seal_directory(cap.read_cap(), 99, [])  # type: ignore[arg-type]

    trio.run(run)


def test_editing_the_middle_of_a_file_uploads_only_nearby_chunks(grid: LocalGrid, tmp_path: Path) -> None:
    # Seeded bytes: where content-defined boundaries fall must not depend on luck.
    rng = random.Random(20261125)
    src = tmp_path / "src"
    src.mkdir()
    before = rng.randbytes(32 << 20)
    (src / "big.bin").write_bytes(before)
    home = _home(tmp_path / "home", grid, seed=bytes(range(32)))
    _upload(home, src)
    after = bytearray(before)
    after[16 << 20 : 17 << 20] = rng.randbytes(1 << 20)
    (src / "big.bin").write_bytes(after)

    async def edit() -> tuple[int, int, int]:
        async with open_volume(home) as vol:  # a new process would start with nothing cached, like this
            await Tree(vol, vol.keys.root).upload(src)
            old = {bytes(c) for _, c in iter_chunks(before, vol.chunker)}
            fresh = [c for _, c in iter_chunks(after, vol.chunker) if bytes(c) not in old]
            sealed = sum(len(seal_chunk(vol.keys.chunk_mac_key, c).sealed) for c in fresh)
            return vol.packs.stats.chunk_bytes_packed, sealed, sum(len(c) for c in fresh)

    packed, expected, fresh_plain = trio.run(edit)
    # Exactly the chunks whose content changed went out: nothing was re-sent...
    assert packed == expected, f"an edit of 1 MiB re-uploaded {packed} bytes, expected {expected}"
    # ...and content-defined cutting kept the change local (the edited MiB plus the
    # chunks it touches, never a shift of everything after it).
    assert (1 << 20) <= fresh_plain < 12 << 20, fresh_plain
    _download(home, tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == bytes(after)


def test_a_store_cancelled_midway_then_repeated_publishes_only_stored_packs(grid: LocalGrid, tmp_path: Path) -> None:
    """Regression: an fsync that timed out while a pack waited for an upload slot lost that pack,
    and the retry deduplicated against refs into it (acknowledged data unreadable)."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 << 20))
    home = _home(tmp_path / "home", grid)

    async def run() -> None:
        async with open_volume(home) as vol:
            await _wait_peers(vol)
            for delay in (0.05, 0.2, 0.5):  # cancel at different points of the pipeline
                with trio.move_on_after(delay):
                    await vol.store_file(src)
            content, size = await vol.store_file(src)
            await vol.save_dir(vol.keys.root, [DirEntry("big.bin", content, size=size)], None, 0)

    trio.run(run)
    _download(home, tmp_path / "out")  # a fresh volume: nothing cached, everything from peers
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()


def test_every_flush_that_may_hold_refs_into_a_failed_pack_fails(grid: LocalGrid, tmp_path: Path) -> None:
    """Regression: fsync and the write-back flushed at once and only the first to look saw a
    pack's upload failure; the other acknowledged data that was never stored."""
    rng = random.Random(4)
    shared = rng.randbytes(3 << 20)
    home = _home(tmp_path / "home", grid)

    async def run() -> None:
        async with open_volume(home) as vol:
            await _wait_peers(vol)
            grid.storage[0].kill()  # 3 of 5 left, happy is 4: every pack upload fails
            grid.storage[1].kill()
            outcomes: dict[str, str] = {}

            async def store_and_flush(who: str, data: bytes) -> None:
                mark = vol.upload_mark()
                await vol.store(data)
                try:
                    await vol.flush(since=mark)
                    outcomes[who] = "acknowledged"
                except NotEnoughPeers:
                    outcomes[who] = "failed"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(store_and_flush, "write-back", shared + rng.randbytes(1 << 20))
                nursery.start_soon(store_and_flush, "fsync", shared)  # dedups into the write-back's pack
            assert outcomes == {"write-back": "failed", "fsync": "failed"}

            # A pack that fails in the background, before its owner flushes, fails that flush too.
            mark = vol.upload_mark()
            await vol.store(rng.randbytes(20 << 20))  # more than a pack: some ship while storing
            with trio.fail_after(30):
                while vol.upload_mark() == mark:  # noqa: ASYNC110 (Volume exposes no event for this)
                    await trio.sleep(0.05)
            with pytest.raises(NotEnoughPeers):
                await vol.flush(since=mark)
            await vol.flush()  # nothing new was stored: nothing to report

            # Peers back: the same bytes are sealed and sent again, not deduplicated into
            # the failed packs, and they read back from a fresh volume.
            grid.storage[0].start()
            grid.storage[1].start()
            await _wait_peers(vol)
            packed = vol.packs.stats.chunk_bytes_packed
            mark = vol.upload_mark()
            content = await vol.store(shared)
            assert vol.packs.stats.chunk_bytes_packed - packed >= len(shared)
            await vol.save_dir(vol.keys.root, [DirEntry("shared.bin", content, size=len(shared))], None, 0, since=mark)

    trio.run(run)
    _download(home, tmp_path / "out")
    assert (tmp_path / "out" / "shared.bin").read_bytes() == shared


def test_sequential_reads_fetch_ahead_and_return_the_right_bytes(grid: LocalGrid, tmp_path: Path) -> None:
    data = random.Random(5).randbytes(12 << 20)
    src = tmp_path / "seq.bin"
    src.write_bytes(data)
    home = _home(tmp_path / "home", grid)

    async def run() -> None:
        async with open_volume(home) as vol:
            await _wait_peers(vol)
            content, size = await vol.store_file(src)
            await vol.flush()
        async with open_volume(home) as vol:  # nothing cached
            first = await vol.read(content, 0, 128 << 10, size)
            # the first read of a file starts fetching what follows it
            with trio.fail_after(30):
                while vol.packs.stats.fragment_bytes_received < 4 << 20:  # noqa: ASYNC110 (a stats counter, no event)
                    await trio.sleep(0.05)
            pieces = [first]
            offset = len(first)
            while offset < size:
                piece = await vol.read(content, offset, 128 << 10, size)
                pieces.append(piece)
                offset += len(piece)
            assert b"".join(pieces) == data
            # random reads elsewhere are still exact (and do not start read-ahead)
            rng = random.Random(6)
            for _ in range(50):
                at = rng.randrange(size)
                assert await vol.read(content, at, 70_000, size) == data[at : at + 70_000]

    trio.run(run)
