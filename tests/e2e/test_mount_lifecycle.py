"""The mount's life: it never dies of an error it retries, durability calls do what they say,
commands tell the truth about what stayed local, a damaged journal is refused and salvaged,
and a home in use is locked. Real processes throughout (grid, `pluto mount`, the CLI).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pluto_fs.grid.localgrid import child_env
from pluto_fs.grid.testing import MountedVolume, start_mounted_volume
from pluto_fs.home import Home
from pluto_fs.mount.run import is_mounted

T = TypeVar("T")


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[MountedVolume]:
    """A fresh grid and mount, with short network timeouts so failures come fast."""
    vol = start_mounted_volume(tmp_path / "m", timeout=5.0)
    try:
        config = vol.home.config()
        config.request_timeout = 2.0
        vol.home.save_config(config)
        vol.unmount()
        vol.mount()
        yield vol
    finally:
        vol.close()


def _pluto(home: Home | Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    path = home.path if isinstance(home, Home) else home
    return subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", *args, "--home", str(path)],
                          capture_output=True, text=True, env=child_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def _status(home: Home) -> dict:
    res = _pluto(home, "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _eventually(check: Callable[[], T | None], what: str, timeout: float = 60.0, every: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` (and the last value)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")


def _nothing_pending(vol: MountedVolume) -> dict | None:
    """The mount's status once it shows nothing pending, written after this call began (else None):
    a status file from before the caller's last write would pass off that write as published."""
    asked = time.time()
    s = _status(vol.home)
    if s["mounted"] and s["pending_files"] == 0 and s["pending_folders"] == 0 and s["as_of"] > asked:
        return s
    return None


def _assert_alive(vol: MountedVolume) -> None:
    """The mount process still runs (else: what it logged last)."""
    assert vol.proc is not None and vol.proc.poll() is None, \
        "the mount process died:\n" + vol.log_path.read_text()[-3000:]


def _problem(vol: MountedVolume, key: str) -> dict:
    """The retried failure `key` in `pluto status --json` ({} if none), the mount checked alive first."""
    _assert_alive(vol)
    return _status(vol.home).get("problems", {}).get(key, {})


def _one_line_error(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, f"expected one line, got:\n{text}"
    return lines[0]


# ---- 5. nothing escapes the mount's loops ------------------------------------------------------


def test_the_mount_survives_losing_3_of_5_peers_while_writing_and_uploads_once_they_are_back(
        mounted: MountedVolume) -> None:
    (mounted.path / "before.bin").write_bytes(before := os.urandom(600_000))  # in packs, not inline
    _eventually(lambda: _nothing_pending(mounted), "before.bin is stored")  # else its upload fails first
    written: dict[str, bytes] = {}
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        # Small files (inline: they need no pack) and new folders, so folder publishing, not
        # pack uploads, is what meets the lost peers.
        i = 0
        folder = mounted.path
        while not stop.is_set():
            try:
                if i % 10 == 0:
                    folder = mounted.path / f"d{i:04d}"
                    folder.mkdir()
                data = f"file {i} ".encode() * (1 + i % 50)
                (folder / f"f{i:04d}").write_bytes(data)
            except OSError as exc:
                errors.append(f"after {i} files: {exc}")
                return
            written[str((folder / f"f{i:04d}").relative_to(mounted.path))] = data
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        _eventually(lambda: len(written) >= 30 or errors, "the writer gets going")
        for p in mounted.grid.storage[:3]:
            p.kill()
        at_kill = len(written)
        # The first folder publishes after the kill fail (today's main ended the mount right there).
        _eventually(lambda: len(written) >= at_kill + 60 or errors, "writes go on after the peers are lost")
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    _assert_alive(mounted)
    # A file stored in packs cannot be placed on 2 peers (4 needed): the write-back keeps failing.
    (mounted.path / "during.bin").write_bytes(during := os.urandom(300_000))
    written["during.bin"] = during
    _eventually(lambda: _problem(mounted, "write_back").get("count", 0) >= 3,
                "status shows the write-back retrying", timeout=60)
    status = _status(mounted.home)
    problem = status["problems"]["write_back"]
    assert "peers" in problem["last"] and problem["since"] <= time.time(), problem
    assert status["at_risk"] is True and status["pending_files"] >= 1
    text = _pluto(mounted.home, "status").stdout
    assert "write-back:" in text and "attempts failed since" in text and "will keep trying" in text, text
    # it keeps serving: listing, reading and writing
    assert (mounted.path / "before.bin").read_bytes() == before
    (mounted.path / "while-degraded.txt").write_bytes(b"still accepted")
    written["while-degraded.txt"] = b"still accepted"
    assert len(os.listdir(mounted.path)) > 3
    log = mounted.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    retried = [line.split("): ", 1)[1] for line in log.splitlines() if "write-back will retry" in line]
    assert retried and all(a != b for a, b in itertools.pairwise(retried)), f"logged every round: {retried}"

    for i in range(3):
        mounted.grid.restart_peer(i)
    _eventually(lambda: _nothing_pending(mounted), "everything uploads once the peers are back", timeout=90)
    assert "write_back" not in _status(mounted.home)["problems"]
    mounted.remount_fresh()
    assert (mounted.path / "before.bin").read_bytes() == before
    for name, data in written.items():
        assert (mounted.path / name).read_bytes() == data, name


def test_local_disk_full_keeps_the_mount_up_and_uploads_resume_once_space_is_freed(tmp_path: Path) -> None:
    home_dir = tmp_path / "m" / "home"
    home_dir.mkdir(parents=True)
    # The whole home (identity, packs.sqlite, cache files, journal) on a small disk of its own.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(home_dir)], check=True)
    vol: MountedVolume | None = None
    try:
        vol = start_mounted_volume(tmp_path / "m", timeout=5.0)
        config = vol.home.config()
        config.request_timeout = 2.0
        vol.home.save_config(config)
        vol.unmount()
        vol.mount()
        filler = home_dir / "filler"
        filler.write_bytes(b"\0" * (8 << 20))  # someone else's file on the same disk
        for p in vol.grid.storage:
            p.kill()  # nothing leaves the machine: what is written stays pending in the cache
        kept: dict[str, bytes] = {}
        full = None
        for i in range(40):
            name = f"f{i:02d}.bin"
            data = os.urandom(1 << 20)
            try:
                (vol.path / name).write_bytes(data)
            except OSError as exc:
                full = (name, exc)
                break
            kept[name] = data
        assert full is not None and full[1].errno in (errno.ENOSPC, errno.EIO), full
        assert len(kept) >= 3, "the disk should have taken a few files before it was full"
        for i in range(len(vol.grid.storage)):
            vol.grid.restart_peer(i)
        # The uploads now reach the peers but the journal cannot record it: retried, not fatal.
        _eventually(lambda: "full" in _problem(vol, "write_back").get("last", ""),
                    "status reports the disk-full write-back", timeout=90)
        _assert_alive(vol)
        assert _status(vol.home)["at_risk"] is True
        assert (vol.path / "f00.bin").read_bytes() == kept["f00.bin"]  # still serving
        partial = (vol.path / full[0]).read_bytes() if (vol.path / full[0]).exists() else None

        filler.unlink()  # space is freed
        _eventually(lambda: _nothing_pending(vol), "uploads resume once space is freed", timeout=90)
        _assert_alive(vol)
        assert "Traceback" not in vol.log_path.read_text()
        vol.unmount()
        vol.drop_cache()
        vol.mount()
        for name, data in kept.items():
            assert (vol.path / name).read_bytes() == data, name
        if partial is not None:  # the file whose write failed keeps what the mount had accepted
            assert (vol.path / full[0]).read_bytes() == partial
    finally:
        if vol is not None:
            vol.close()
        subprocess.run(["umount", "-l", str(home_dir)], capture_output=True)


# ---- 6. durability calls and the commands that report them -----------------------------------------


def test_fsync_of_a_folder_publishes_renames_unlinks_and_new_files_before_it_returns(mounted: MountedVolume) -> None:
    d = mounted.path / "docs"
    d.mkdir()
    (d / "draft.txt").write_bytes(b"the text")
    (d / "old.txt").write_bytes(b"obsolete")
    _eventually(lambda: _nothing_pending(mounted), "the first versions are published")
    os.rename(d / "draft.txt", d / "final.txt")
    os.unlink(d / "old.txt")
    (d / "new.txt").write_bytes(b"never fsync'd as a file")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    mounted.kill()  # right after fsync(dir) returned: nothing else had the time to publish
    mounted.drop_cache()  # and this machine is gone: only the peers remain
    mounted.mount()
    assert sorted(os.listdir(d)) == ["final.txt", "new.txt"]
    assert (d / "final.txt").read_bytes() == b"the text"
    assert (d / "new.txt").read_bytes() == b"never fsync'd as a file"


def test_unmount_and_status_say_what_stayed_local_when_no_peer_is_up(mounted: MountedVolume, tmp_path: Path) -> None:
    home = mounted.home
    mounted.unmount()
    mnt = mounted.path
    res = _pluto(home, "mount", str(mnt), "--timeout", "5")  # in the background, as a person would
    assert res.returncode == 0, res.stderr
    try:
        (mnt / "photos").mkdir()
        (mnt / "photos" / "cat.jpg").write_bytes(b"meow" * 5000)
        for p in mounted.grid.storage:
            p.kill()
        res = _pluto(home, "unmount", str(mnt), "--wait", "120")
        assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
        assert "1 file" in res.stderr and "still only on this machine" in res.stderr, res.stderr
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)

    s = _status(home)  # not mounted: the journal is the truth
    assert s["mounted"] is False
    assert s["pending_files"] == 1 and s["pending_bytes"] == 20000 and s["pending_folders"] >= 1, s
    assert s["at_risk"] is True and s["risk"] != "none"
    text = _pluto(home, "status").stdout
    assert "only on this machine" in text and "nothing uploading" not in text, text

    # after kill -9 of the mount, too
    for i in range(len(mounted.grid.storage)):
        mounted.grid.restart_peer(i)
    mounted.mount()
    for p in mounted.grid.storage:
        p.kill()
    (mnt / "photos" / "dog.jpg").write_bytes(b"woof" * 100)
    mounted.kill()
    s = _status(home)  # cat.jpg may have uploaded before the peers went: dog.jpg cannot have
    assert s["mounted"] is False and s["pending_files"] >= 1 and s["pending_bytes"] >= 400, s
    assert s["at_risk"] is True, s

    # fewer than k peers up, and then no coordinator either: at_risk always agrees with risk
    s = _eventually(lambda: (s := _status(home))["peers_alive"] < 3 and s, "the coordinator sees the peers gone")
    assert s["risk"].startswith("unreadable") and s["at_risk"] is True, s
    mounted.grid.coordinator.stop()
    s = _status(home)
    assert s["risk"] != "none" and s["at_risk"] is True, s


def test_ctrl_c_on_demo_uploads_what_is_pending_before_the_grid_stops(tmp_path: Path) -> None:
    state, mnt = tmp_path / "demo", tmp_path / "mnt"

    def run_demo() -> subprocess.Popen:
        out = open(tmp_path / "demo.out", "ab")
        # Its own session, like a shell job: SIGINT to its process group is what Ctrl-C sends.
        proc = subprocess.Popen([sys.executable, "-m", "pluto_fs.cli.main", "demo", str(mnt), "--state", str(state),
                                 "--timeout", "10", "--capacity", "1G"], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, env=child_env(), start_new_session=True)
        out.close()
        _eventually(lambda: is_mounted(mnt) or proc.poll() is not None, "the demo mounts", timeout=120)
        assert proc.poll() is None, (tmp_path / "demo.out").read_text()[-3000:]
        return proc

    def ctrl_c(proc: subprocess.Popen) -> int:
        os.killpg(proc.pid, signal.SIGINT)
        return proc.wait(180)

    proc = run_demo()
    try:
        (mnt / "note.txt").write_bytes(b"written just before Ctrl-C")  # not fsync'd: the final upload saves it
        rc = ctrl_c(proc)
        assert rc == 0, (tmp_path / "demo.out").read_text()[-3000:]
        assert not is_mounted(mnt)
        shutil.rmtree(state / "home" / "cache")  # only the peers can bring it back now
        proc = run_demo()
        assert (mnt / "note.txt").read_bytes() == b"written just before Ctrl-C"
        assert ctrl_c(proc) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


# ---- journal damage --------------------------------------------------------------------------------


def _leave_a_pending_file(vol: MountedVolume, name: str, data: bytes, crash: bool) -> Path:
    """Write `name` with no peer to upload it to, then unmount (or kill -9); return its cache file."""
    for p in vol.grid.storage:
        p.kill()
    assert len(data) > 2048, "bigger than a file stored inline in its folder: it needs the peers"
    (vol.path / name).write_bytes(data)
    vol.kill() if crash else vol.unmount()
    files = [f for f in (vol.home.cache / "files").iterdir() if f.read_bytes() == data]
    assert len(files) == 1
    for i in range(len(vol.grid.storage)):
        vol.grid.restart_peer(i)
    return files[0]


def _mount_refused(vol: MountedVolume) -> str:
    """Mount, expect the process to exit; return its one error line (the log holds no traceback)."""
    with pytest.raises(RuntimeError):
        vol.mount()
    log = vol.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    lines = [line for line in log.strip().splitlines() if line.startswith("pluto: ")]
    assert lines, log[-3000:]
    return lines[-1]


def test_a_journal_of_garbage_bytes_is_refused_with_one_line_and_salvaged(mounted: MountedVolume) -> None:
    (mounted.path / "safe.txt").write_bytes(b"on the peers")
    _eventually(lambda: _nothing_pending(mounted), "safe.txt is published")
    # A clean exit (the upload failed: the file stays pending) closes the journal, so SQLite
    # removes its WAL: the garbage below is all there is.
    cache_file = _leave_a_pending_file(mounted, "local.txt", b"only here" * 1000, crash=False)
    journal = mounted.home.cache / "journal.sqlite"
    assert not (mounted.home.cache / "journal.sqlite-wal").exists()
    journal.write_bytes(os.urandom(8192))
    message = _mount_refused(mounted)
    assert "damaged" in message and "pluto salvage" in message and "safe" in message, message
    assert cache_file.exists()

    res = _pluto(mounted.home, "salvage")
    assert res.returncode == 0, res.stderr
    salvaged = [p for p in (mounted.home.path / "salvaged").rglob("*") if p.is_file()]
    # Garbage cannot say which local copy is pending: every one is kept, none deleted.
    assert sorted(p.read_bytes() for p in salvaged) == [b"on the peers", b"only here" * 1000], salvaged
    assert list(mounted.home.cache.glob("journal.sqlite.damaged-*")), "the damaged journal is kept aside"
    mounted.mount()  # a fresh journal: what the peers hold is all there
    assert sorted(os.listdir(mounted.path)) == ["safe.txt"]
    assert (mounted.path / "safe.txt").read_bytes() == b"on the peers"


def test_an_emptied_journal_with_a_pending_file_is_refused_and_salvage_keeps_its_bytes(
        mounted: MountedVolume) -> None:
    cache_file = _leave_a_pending_file(mounted, "pending.txt", b"not uploaded yet" * 500, crash=True)
    journal = mounted.home.cache / "journal.sqlite"
    journal.write_bytes(b"")  # truncated to 0 bytes (SQLite would open it as a new database)
    for extra in ("journal.sqlite-wal", "journal.sqlite-shm"):
        (mounted.home.cache / extra).unlink(missing_ok=True)
    message = _mount_refused(mounted)
    assert "1 local file" in message and "pluto salvage" in message, message
    assert cache_file.read_bytes() == b"not uploaded yet" * 500, "the cache copy must survive"

    res = _pluto(mounted.home, "salvage")
    assert res.returncode == 0, res.stderr
    assert "salvaged" in res.stdout, res.stdout
    salvaged = [p for p in (mounted.home.path / "salvaged").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in salvaged] == [b"not uploaded yet" * 500], salvaged
    mounted.mount()
    assert os.listdir(mounted.path) == []


# ---- the home lock ---------------------------------------------------------------------------------


def test_a_home_in_use_refuses_a_second_mount_and_writing_commands(mounted: MountedVolume, tmp_path: Path) -> None:
    (mounted.path / "hello.txt").write_bytes(b"hi")
    _eventually(lambda: _nothing_pending(mounted), "hello.txt is published")
    other = tmp_path / "other-mnt"
    other.mkdir()
    pid = mounted.proc.pid if mounted.proc else 0
    try:
        for argv in (["mount", str(other)], ["mount", "-f", str(other)]):
            res = _pluto(mounted.home, *argv, timeout=60)
            assert res.returncode == 1, (argv, res.stdout, res.stderr)
            line = _one_line_error(res.stderr)
            assert f"pid {pid}" in line and str(mounted.path) in line and "pluto mount" in line, line
            assert not is_mounted(other)
    finally:
        if is_mounted(other):  # a second mount that should not have happened: its process exits once unmounted
            subprocess.run(["fusermount3", "-u", "-z", str(other)], capture_output=True)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    res = _pluto(mounted.home, "put", str(src), "/")
    assert res.returncode == 1 and f"pid {pid}" in _one_line_error(res.stderr), res.stderr
    res = _pluto(mounted.home, "ls", "/")  # reading still works
    assert res.returncode == 0 and "hello.txt" in res.stdout, res.stderr
    mounted.unmount()
    res = _pluto(mounted.home, "put", str(src), "/")  # and once unmounted, writing does too
    assert res.returncode == 0, res.stderr
