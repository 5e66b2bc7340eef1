"""Several writers of one folder merge entry by entry; nobody's acknowledged change is dropped.

Reproductions of issue 10, item 2: two devices of one user (the same 24 words
on two homes) and a follower writing into a `--write` share each published
their own view of a folder over the other's, so acknowledged files vanished.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import fsync_dir, ls, pluto, restore_home, wait_until, write_durably

from pluto_fs.grid.testing import MountedVolume, start_mounted_volume
from pluto_fs.home import Home

CONFLICT = re.compile(r"^notes\.pluto-conflict-\d{8}-\d{6}-[0-9a-f]{8}\.txt$")


def _second_mount(root: Path, vol: MountedVolume, home: Home) -> MountedVolume:
    """Another `pluto mount -f` over the same grid, for `home`."""
    root.mkdir(parents=True, exist_ok=True)
    mnt = Path(tempfile.mkdtemp(prefix="pluto-mnt-")) / "mnt"
    other = MountedVolume(root, vol.grid, home, mnt, vol.timeout)
    other.mount()
    return other


@pytest.fixture
def two_devices(tmp_path: Path) -> Iterator[tuple[MountedVolume, MountedVolume]]:
    """One user, two machines: the same identity mounted from two homes over one grid."""
    a = start_mounted_volume(tmp_path / "a", timeout=10.0)
    b = None
    try:
        (a.path / "shared").mkdir()
        write_durably(a.path / "shared" / "base.txt", b"both devices see this")
        fsync_dir(a.path / "shared")
        b = _second_mount(tmp_path / "b", a, restore_home(a.home, a.grid, tmp_path / "b" / "home"))
        assert sorted(os.listdir(b.path / "shared")) == ["base.txt"]  # b now holds this version
        yield a, b
    finally:
        if b is not None:
            b.kill()
        a.close()


def test_two_devices_adding_files_to_one_folder_keep_both(two_devices, tmp_path: Path) -> None:
    a, b = two_devices
    write_durably(a.path / "shared" / "from-a.txt", b"written on a")
    write_durably(b.path / "shared" / "from-b.txt", b"written on b")  # b's folder version is behind a's
    write_durably(a.path / "shared" / "from-a-2.txt", b"a again")
    reader = restore_home(a.home, a.grid, tmp_path / "reader")
    assert ls(reader, "/shared") == ["base.txt", "from-a-2.txt", "from-a.txt", "from-b.txt"]
    # ...and both mounts converge on it once they publish again.
    write_durably(b.path / "shared" / "from-b-2.txt", b"b again")
    assert wait_until(lambda: "from-a-2.txt" in os.listdir(b.path / "shared"), what="b sees a's files")
    assert (b.path / "shared" / "from-a.txt").read_bytes() == b"written on a"


def test_the_same_file_edited_on_two_devices_keeps_a_winner_and_a_conflict_copy(two_devices, tmp_path: Path) -> None:
    a, b = two_devices
    write_durably(a.path / "shared" / "notes.txt", b"first draft")
    fsync_dir(a.path / "shared")
    assert wait_until(lambda: "notes.txt" in os.listdir(b.path / "shared"), what="b sees notes.txt")
    assert (b.path / "shared" / "notes.txt").read_bytes() == b"first draft"
    write_durably(a.path / "shared" / "notes.txt", b"edited on a")
    write_durably(b.path / "shared" / "notes.txt", b"edited on b, concurrently")
    reader = restore_home(a.home, a.grid, tmp_path / "reader")
    names = ls(reader, "/shared")
    copies = [n for n in names if CONFLICT.match(n)]
    assert len(copies) == 1 and "notes.txt" in names, names
    out = tmp_path / "out"
    pluto(reader, "get", "/shared", str(out))
    versions = {(out / "notes.txt").read_bytes(), (out / copies[0]).read_bytes()}
    assert versions == {b"edited on a", b"edited on b, concurrently"}


def test_a_delete_on_one_device_does_not_win_over_an_edit_on_the_other(two_devices, tmp_path: Path) -> None:
    a, b = two_devices
    os.unlink(a.path / "shared" / "base.txt")
    fsync_dir(a.path / "shared")
    write_durably(b.path / "shared" / "base.txt", b"edited on b while a deleted it")
    reader = restore_home(a.home, a.grid, tmp_path / "reader")
    assert ls(reader, "/shared") == ["base.txt"]
    out = tmp_path / "out"
    pluto(reader, "get", "/shared", str(out))
    assert (out / "base.txt").read_bytes() == b"edited on b while a deleted it"


def test_a_delete_acknowledged_on_one_device_is_not_undone_by_the_other(two_devices, tmp_path: Path) -> None:
    a, b = two_devices
    write_durably(a.path / "shared" / "gone.txt", b"to be deleted")
    fsync_dir(a.path / "shared")
    assert wait_until(lambda: "gone.txt" in os.listdir(b.path / "shared"), what="b sees gone.txt")
    os.unlink(a.path / "shared" / "gone.txt")
    fsync_dir(a.path / "shared")
    write_durably(b.path / "shared" / "other.txt", b"b writes elsewhere in the folder")
    reader = restore_home(a.home, a.grid, tmp_path / "reader")
    assert ls(reader, "/shared") == ["base.txt", "other.txt"]


def test_a_follower_writing_into_a_write_share_is_not_overwritten_by_the_owner(tmp_path: Path) -> None:
    """The owner's running mount holds an older version of the shared folder and writes into it
    after the follower did: both files (and the follower's append) stay, for both of them."""
    owner_vol = start_mounted_volume(tmp_path / "alice", timeout=10.0)
    grid = owner_vol.grid
    carol_vol = None
    try:
        alice = owner_vol.home
        project = owner_vol.path / "Project"
        project.mkdir()
        write_durably(project / "plan.txt", b"the plan")
        fsync_dir(project)
        carol = Home(tmp_path / "carol-home")
        from cryptree.identity import new_seed
        from pluto_fs.home import Config

        carol.create(new_seed(), Config(coordinator=grid.coordinator.address, share_poll=1.0))
        pluto(alice, "register", "alice")
        pluto(carol, "register", "carol")
        pluto(carol, "follow", "alice")
        pluto(alice, "requests")
        pluto(alice, "accept", "carol")
        pluto(alice, "share", "/Project", "carol", "--write")
        pluto(carol, "requests")
        carol_vol = _second_mount(tmp_path / "carol", owner_vol, carol)
        shared = carol_vol.path / "shared" / "alice" / "Project"
        assert wait_until(lambda: shared.is_dir() and "plan.txt" in os.listdir(shared), what="carol sees Project")
        write_durably(shared / "carol.txt", b"carol's part")
        with open(shared / "plan.txt", "ab") as f:
            f.write(b", amended by carol")
            f.flush()
            os.fsync(f.fileno())
        write_durably(project / "alice.txt", b"alice's part")  # her mount still holds the older version
        write_durably(project / "alice-2.txt", b"and more")
        listing = ls(alice, "/Project")
        assert listing == ["alice-2.txt", "alice.txt", "carol.txt", "plan.txt"], listing
        out = tmp_path / "out"
        pluto(alice, "get", "/Project", str(out))
        assert (out / "plan.txt").read_bytes() == b"the plan, amended by carol"
        assert (out / "carol.txt").read_bytes() == b"carol's part"
        # ...and both mounts show it all once they look again
        assert wait_until(lambda: "carol.txt" in os.listdir(project), what="alice's mount sees carol.txt")
        assert (project / "plan.txt").read_bytes() == b"the plan, amended by carol"
        assert wait_until(lambda: "alice-2.txt" in os.listdir(shared), what="carol's mount sees alice's files")
    finally:
        if carol_vol is not None:
            carol_vol.kill()
        owner_vol.close()


def test_removing_a_folder_another_device_just_wrote_into_is_refused(two_devices, tmp_path: Path) -> None:
    import errno

    a, b = two_devices
    (a.path / "shared" / "box").mkdir()
    fsync_dir(a.path / "shared")
    assert wait_until(lambda: "box" in os.listdir(b.path / "shared"), what="b sees box")
    assert os.listdir(b.path / "shared" / "box") == []
    write_durably(a.path / "shared" / "box" / "letter.txt", b"posted on a")
    # b still lists box as empty, but rmdir looks at the network first: the letter is not orphaned
    try:
        os.rmdir(b.path / "shared" / "box")
    except OSError as exc:
        assert exc.errno == errno.ENOTEMPTY
    else:
        raise AssertionError("rmdir removed a folder another device had just written into")
    reader = restore_home(a.home, a.grid, tmp_path / "reader")
    assert ls(reader, "/shared/box") == ["letter.txt"]
