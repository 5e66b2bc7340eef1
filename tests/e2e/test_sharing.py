"""Alice shares with Bob (read) and Carol (write) through a real grid; nobody learns the graph."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support import pluto, restore_home

from cryptree.identity import new_seed, seed_to_phrase
from cryptree.slot import sign_slot
from pluto_fs.grid.localgrid import LocalGrid
from pluto_fs.grid.testing import MountedVolume
from pluto_fs.home import Config, Home
from pluto_fs.volume.tree import Tree
from pluto_fs.volume.volume import open_volume


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[LocalGrid, dict[str, Home]]]:
    grid = LocalGrid(tmp_path / "grid", peers=5, capacity="1G", heartbeat=0.5)
    grid.start()
    try:
        homes = {}
        for name in ("alice", "bob", "carol"):
            home = Home(tmp_path / name)
            home.create(new_seed(), Config(coordinator=grid.coordinator.address, share_poll=1.0))
            homes[name] = home
        yield grid, homes
    finally:
        grid.stop()


def _alice_writes(home: Home, files: dict[str, bytes]) -> None:
    async def run() -> None:
        async with open_volume(home) as vol:
            with trio.fail_after(20):
                while len(await vol.net.find_peers(5)) < 5:  # noqa: ASYNC110 (peer processes registering)
                    await trio.sleep(0.2)
            src = home.path.parent / f"src-{time.monotonic_ns()}"
            for rel, data in files.items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_bytes(data)
            await Tree(vol, vol.keys.root).upload(src, "/")

    trio.run(run)


def _alice_reads(home: Home, path: str) -> bytes:
    async def run() -> bytes:
        async with open_volume(home) as vol:
            return await Tree(vol, vol.keys.root).read_file(path)

    return trio.run(run)


def _mount(root: Path, grid: LocalGrid, home: Home) -> MountedVolume:
    import tempfile

    root.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix="pluto-mnt-"))
    vol = MountedVolume(root, grid, home, parent / "mnt", timeout=10.0)
    vol.mount()
    return vol


def _eventually(check, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_alice_shares_photos_with_bob_and_project_with_carol(world, tmp_path: Path) -> None:
    grid, homes = world
    alice, bob, carol = homes["alice"], homes["bob"], homes["carol"]
    _alice_writes(alice, {"Photos/beach.jpg": os.urandom(300_000), "Photos/sub/cat.jpg": b"meow" * 1000,
                          "Project/plan.txt": b"the plan", "Private/diary.txt": b"dear diary"})
    for name, home in homes.items():
        pluto(home, "register", name)
    pluto(bob, "follow", "alice")
    pluto(carol, "follow", "alice")
    db = sqlite3.connect(grid.root / "coordinator" / "coordinator.sqlite")
    sizes = [row[0] for row in db.execute("SELECT LENGTH(blob) FROM mail")]
    db.close()
    assert len(sizes) == 2 and set(sizes) == {1024}, sizes  # every request the same size, whoever sent it
    out = pluto(alice, "requests").stdout
    assert "bob asks to follow you" in out and "carol asks to follow you" in out
    pluto(alice, "accept", "bob")
    pluto(alice, "accept", "carol")
    pluto(alice, "share", "/Photos", "bob")
    pluto(alice, "share", "/Project", "carol", "--write")
    assert "accepted" in pluto(bob, "requests").stdout
    carol_news = pluto(carol, "requests").stdout
    assert "accepted" in carol_news and "write access" in carol_news

    bob_mount = _mount(tmp_path / "bm", grid, bob)
    carol_mount = _mount(tmp_path / "cm", grid, carol)
    try:
        photos = bob_mount.path / "shared" / "alice" / "Photos"
        assert (photos / "sub" / "cat.jpg").read_bytes() == b"meow" * 1000
        assert sorted(os.listdir(bob_mount.path / "shared" / "alice")) == ["Photos"]  # not Project, not Private
        with pytest.raises(OSError) as err:
            (photos / "new.txt").write_bytes(b"bob was here")
        assert err.value.errno in (errno.EACCES, errno.EROFS)

        project = carol_mount.path / "shared" / "alice" / "Project"
        assert (project / "plan.txt").read_bytes() == b"the plan"
        with open(project / "carol.txt", "wb") as f:
            f.write(b"carol's part")
            f.flush()
            os.fsync(f.fileno())
        assert _alice_reads(alice, "/Project/carol.txt") == b"carol's part"

        # owner's changes appear within a poll interval
        _alice_writes(alice, {"Photos/later.jpg": b"taken later"})
        def later_visible() -> None:
            assert (photos / "later.jpg").read_bytes() == b"taken later"

        _eventually(later_visible)

        # revocation
        bob_mount.unmount()
        old_photos_cap = None

        async def bobs_view() -> set[str]:
            async with open_volume(bob) as vol:
                from pluto_fs.volume.social import shares_for_mount

                share_dir, _ = shares_for_mount(bob)["alice"]
                listing = await vol.load_dir(share_dir)
                entries = {e.name: e for e in listing.entries}
                if "Photos" not in entries:
                    return set()
                nonlocal old_photos_cap
                old_photos_cap = old_photos_cap or entries["Photos"].child.cap
                return {e.name for e in (await vol.load_dir(old_photos_cap)).entries}

        assert "later.jpg" in trio.run(bobs_view)
        pluto(alice, "unshare", "/Photos", "bob")
        _alice_writes(alice, {"Photos/after-revocation.jpg": b"bob must not see this"})
        # everything Bob holds (the old Photos capability) no longer leads to new files
        async def with_old_cap() -> set[str]:
            async with open_volume(bob) as vol:
                return {e.name for e in (await vol.load_dir(old_photos_cap)).entries}

        assert "after-revocation.jpg" not in trio.run(with_old_cap)
        assert trio.run(bobs_view) == set()  # the share is gone from his sharing folder
        bob_mount.mount()
        assert os.listdir(bob_mount.path / "shared" / "alice") == []
    finally:
        bob_mount.kill()
        carol_mount.kill()

    # the graph stays hidden: no store links alice's identity to bob's or carol's
    grid.stop()
    keys = {name: (home.keys().user_id, home.keys().box_public) for name, home in homes.items()}
    stores = [grid.root / "coordinator"] + [grid.root / f"peer{i}" for i in range(5)]
    for store in stores:
        for path in store.rglob("*"):
            if not path.is_file() or path.suffix in (".log",):
                continue
            blob = path.read_bytes()
            present = {name for name, (uid, box) in keys.items() if uid in blob or box in blob}
            # a user's own key may appear (username claim, card, mailbox id), never two users' keys in one record
            if len(present) > 1 and path.name.startswith("coordinator.sqlite"):
                db = sqlite3.connect(path)
                for table in ("users", "cards", "mailboxes", "mail"):
                    try:
                        rows = db.execute(f"SELECT * FROM {table}").fetchall()
                    except sqlite3.DatabaseError:
                        continue
                    for row in rows:
                        flat = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
                        linked = {n for n, (uid, box) in keys.items() if uid in flat or box in flat}
                        assert len(linked) <= 1, f"{table} row links {linked}"
                db.close()
            elif path.parent.name != "coordinator":
                assert not present, f"{path} holds a user key of {present}"



def test_the_24_words_bring_shares_back_in_both_directions(world, tmp_path: Path) -> None:
    grid, homes = world
    alice, bob = homes["alice"], homes["bob"]
    _alice_writes(alice, {"Photos/beach.jpg": b"sand" * 1000, "Project/plan.txt": b"the plan"})
    pluto(alice, "register", "alice")
    pluto(bob, "register", "bob")
    pluto(bob, "follow", "alice")
    pluto(alice, "requests")
    pluto(alice, "accept", "bob")
    pluto(alice, "share", "/Photos", "bob")
    assert "accepted" in pluto(bob, "requests").stdout

    # Both lose their machines.
    alice2 = restore_home(alice, grid, tmp_path / "alice-new", says="Restored your social state: ")
    bob2 = restore_home(bob, grid, tmp_path / "bob-new", says="Restored your social state: ")
    # The owner still knows the follower and their sharing folder: sharing more needs no new follow.
    assert "/Photos" in pluto(alice2, "shares").stdout
    pluto(alice2, "share", "/Project", "bob")
    # The follower still holds the sharing folder Alice gave him, and sees both shares.
    bob_mount = _mount(tmp_path / "bm", grid, bob2)
    try:
        shared = bob_mount.path / "shared" / "alice"

        def both_visible() -> None:
            assert sorted(os.listdir(shared)) == ["Photos", "Project"]

        _eventually(both_visible)
        assert (shared / "Photos" / "beach.jpg").read_bytes() == b"sand" * 1000
        assert (shared / "Project" / "plan.txt").read_bytes() == b"the plan"
    finally:
        bob_mount.kill()
    # The backups are sealed like any other slot: no peer holds a username or a user key in the clear.
    stored = b"".join(p.read_bytes() for i in range(5) for p in (grid.root / f"peer{i}").rglob("*") if p.is_file())
    for home in (alice, bob):
        assert home.keys().user_id not in stored
    assert b"alice" not in stored  # (a 3-letter name would turn up in megabytes of ciphertext by chance)


def test_forged_replayed_and_flooded_requests_are_refused_without_losing_real_ones(world) -> None:
    grid, homes = world
    alice, bob = homes["alice"], homes["bob"]
    pluto(alice, "register", "alice")
    pluto(bob, "register", "bob")
    pluto(bob, "follow", "alice")
    db = sqlite3.connect(grid.root / "coordinator" / "coordinator.sqlite")
    (real,) = [bytes(row[0]) for row in db.execute("SELECT blob FROM mail")]
    db.close()
    mailbox = alice.keys().user_id

    async def deposit(blobs: list[bytes]) -> list[str]:
        from transport.coordinator.client import deposit_anonymously
        from transport.errors import RemoteError

        refused = []
        for blob in blobs:
            try:
                await deposit_anonymously(grid.coordinator.address, mailbox, blob)
            except RemoteError as exc:
                refused.append(exc.code)
        return refused

    forged = bytearray(real)
    forged[500] ^= 1
    trio.run(deposit, [bytes(forged), os.urandom(1024)])
    out = pluto(alice, "requests").stdout
    assert "bob asks to follow you" in out
    assert out.count("ignored a mailbox message") == 2
    # the same sealed request again: a replay
    trio.run(deposit, [real])
    assert "ignored a mailbox message" in pluto(alice, "requests").stdout
    # a flood is cut off by the rate limit; what came before stays
    pluto(bob, "follow", "alice")
    refused = trio.run(deposit, [os.urandom(1024) for _ in range(40)])
    assert "rate_limited" in refused
    assert "bob asks to follow you" in pluto(alice, "requests").stdout
    pluto(alice, "accept", "bob")
    assert "accepted" in pluto(bob, "requests").stdout


def test_a_damaged_social_backup_is_reported_but_does_not_stop_a_restore(world, tmp_path: Path) -> None:
    grid, homes = world
    alice = homes["alice"]
    _alice_writes(alice, {"notes.txt": b"still here"})

    async def damage() -> None:  # validly signed with the backup key, garbage inside
        async with open_volume(alice) as vol:
            await vol.slots.write(sign_slot(vol.keys.social.signing_key, 5, b"\x01" + os.urandom(100)))

    trio.run(damage)
    res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", "restore", "--home", str(tmp_path / "new"),
                          "--coordinator", grid.coordinator.address],
                         input=seed_to_phrase(alice.identity_path.read_bytes()), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "1 entries in your root folder" in res.stdout
    assert "social backup on the network does not open" in res.stderr and "Traceback" not in res.stderr
