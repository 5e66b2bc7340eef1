"""Real mounts over real peers: rsync of the standard library, crashes, lost peers."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pluto_fs.grid.testing import MountedVolume, start_mounted_volume

STDLIB = Path(sysconfig.get_paths()["stdlib"])
RSYNC_EXCLUDES = ["--exclude=site-packages"]


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[MountedVolume]:
    """A fresh grid and mount for one test, always torn down."""
    vol = start_mounted_volume(tmp_path / "m", timeout=5.0)
    try:
        yield vol
    finally:
        vol.close()


def _diff(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["diff", "-r", "--no-dereference", *RSYNC_EXCLUDES, str(a), str(b)],
                          capture_output=True, text=True)


def test_rsync_of_the_standard_library_survives_remount_from_a_fresh_cache(mounted: MountedVolume) -> None:
    files = sum(1 for p in STDLIB.rglob("*") if p.is_file() and "site-packages" not in p.parts)
    assert files >= 5000, f"the standard library here has only {files} files"
    dest = mounted.path / "stdlib"
    res = subprocess.run(["rsync", "-a", *RSYNC_EXCLUDES, f"{STDLIB}/", str(dest)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _diff(STDLIB, dest).returncode == 0
    mounted.remount_fresh()
    res = _diff(STDLIB, dest)
    assert res.returncode == 0, res.stdout[-2000:]


def _write_acknowledged(root: Path, stop: threading.Event, acked: dict[str, str], errors: list[str]) -> None:
    """Write files and fsync them; only what fsync acknowledged goes into `acked`."""
    i = 0
    while not stop.is_set():
        name = f"acked-{i:05d}.bin"
        data = os.urandom(1000 + (i * 7919) % 300_000)
        try:
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # the mount died under us: stop, keep what was acknowledged
            errors.append(str(exc))
            return
        acked[name] = hashlib.sha256(data).hexdigest()
        i += 1


def test_kill_9_during_rsync_loses_nothing_that_fsync_acknowledged(mounted: MountedVolume) -> None:
    acked_dir = mounted.path / "acked"
    acked_dir.mkdir()
    os.fsync(os.open(acked_dir, os.O_RDONLY))
    acked: dict[str, str] = {}
    errors: list[str] = []
    stop = threading.Event()
    rsync = subprocess.Popen(["rsync", "-a", *RSYNC_EXCLUDES, f"{STDLIB}/", str(mounted.path / "stdlib")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer = threading.Thread(target=_write_acknowledged, args=(acked_dir, stop, acked, errors))
    writer.start()
    # Crash once several files are acknowledged (waiting for a count, not a fixed time, so a slow machine
    # still crashes mid-rsync with something to check) and no earlier than 3 s into the rsync.
    time.sleep(3)
    deadline = time.monotonic() + 120
    while len(acked) < 5 and not errors and time.monotonic() < deadline:
        time.sleep(0.1)
    mounted.kill()  # kill -9 of the mount process, mid-rsync and mid-write
    stop.set()
    writer.join(60)
    rsync.wait(60)
    assert len(acked) >= 5, f"the writer should have had several files acknowledged before the crash: {errors}"

    # Lose the local cache and journal too: fsync'd data must be on the peers, not only here.
    mounted.drop_cache()
    # ...and lose n-k = 2 peers.
    mounted.grid.storage[1].kill()
    mounted.grid.storage[4].kill()
    mounted.mount()
    for name, digest in acked.items():
        data = (acked_dir / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} changed after the crash"


def test_after_kill_9_the_journal_resumes_pending_uploads(mounted: MountedVolume) -> None:
    src = STDLIB / "json"
    res = subprocess.run(["rsync", "-a", *RSYNC_EXCLUDES, f"{src}/", str(mounted.path / "json")],
                         capture_output=True, text=True)
    assert res.returncode == 0
    mounted.kill()  # nothing was fsync'd: the data is only in the local cache and journal
    mounted.mount()  # resumes from the journal
    assert _diff(src, mounted.path / "json").returncode == 0
    # nothing half-visible: no partial or foreign names appeared
    assert sorted(os.listdir(mounted.path)) == ["json"]
    mounted.unmount()  # uploads what the journal resumed
    mounted.drop_cache()
    mounted.mount()
    assert _diff(src, mounted.path / "json").returncode == 0


def test_after_kill_9_changes_in_folders_nobody_opens_again_still_upload(mounted: MountedVolume) -> None:
    deep = mounted.path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "old.txt").write_bytes(b"published before the crash")
    _wait_until_published(mounted)
    procs = [p.proc for p in mounted.grid.storage]
    for p in procs:
        p.send_signal(signal.SIGSTOP)  # nothing written from here on can leave the machine
    try:
        (deep / "new.txt").write_bytes(b"only in the local cache and journal")
        mounted.kill()
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
    mounted.mount()
    # Nobody looks into a/ again; the mount must still resume a/b's changes, and say so until done.
    _wait_until_published(mounted)
    mounted.remount_fresh()  # the machine is gone: what was not uploaded would be lost
    assert (deep / "new.txt").read_bytes() == b"only in the local cache and journal"
    assert (deep / "old.txt").read_bytes() == b"published before the crash"


def test_with_peers_frozen_cached_data_reads_writes_queue_and_ls_fails_in_time(mounted: MountedVolume) -> None:
    (mounted.path / "seen").write_bytes(b"cached content" * 1000)
    (mounted.path / "far" / "away").mkdir(parents=True)
    (mounted.path / "far" / "away" / "f").write_bytes(b"x")
    mounted.unmount()
    mounted.mount()
    assert (mounted.path / "seen").read_bytes() == b"cached content" * 1000  # loaded into the cache now
    procs = [p.proc for p in mounted.grid.storage] + [mounted.grid.coordinator.proc]
    for p in procs:
        p.send_signal(signal.SIGSTOP)  # peers that accept connections but never answer: the worst case
    try:
        assert (mounted.path / "seen").read_bytes() == b"cached content" * 1000
        (mounted.path / "queued.txt").write_bytes(b"written while the network is away")
        start = time.monotonic()
        with pytest.raises(OSError) as err:
            os.listdir(mounted.path / "far" / "away")
        elapsed = time.monotonic() - start
        assert err.value.errno in (errno.EIO, errno.ETIMEDOUT)
        assert elapsed < mounted.timeout + 10, f"ls took {elapsed:.1f} s with a {mounted.timeout} s timeout"
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
    assert "no answer from the network" in mounted.log_path.read_text()
    mounted.remount_fresh()
    assert (mounted.path / "queued.txt").read_bytes() == b"written while the network is away"
    assert os.listdir(mounted.path / "far" / "away") == ["f"]


def _wait_until_published(mounted: MountedVolume, timeout: float = 120.0) -> None:
    """Until the mount reports nothing pending (its status file is rewritten every second)."""
    status = mounted.home.cache / "mount.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = json.loads(status.read_text())
        except (OSError, ValueError):
            s = {}
        if s.get("updated", 0) > time.time() - 2 and s.get("pending_files") == 0 and s.get("pending_folders") == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"still pending after {timeout:g} s: {s}")


def _snapshot(root: Path) -> dict[str, tuple]:
    """What a crash must not change: kind, mode, content or target, and user xattrs of everything."""
    seen: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)))
            if p.is_symlink():
                what: object = ("link", os.readlink(p))
            elif p.is_dir():
                what = ("dir",)
            else:
                what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            seen[str(p.relative_to(root))] = (*what, st.st_mode, xattrs)
    return seen


def test_after_kill_9_single_entry_changes_to_a_published_folder_resume(mounted: MountedVolume) -> None:
    # The folder is published first, so its journal rows are marked clean and every change
    # below writes single entries: resuming must still see the whole folder, changed.
    d = mounted.path / "d"
    d.mkdir()
    for i in range(40):
        (d / f"f{i:02d}").write_bytes(f"file {i} ".encode() * (i + 1))
    (d / "f40").write_bytes(os.urandom(300_000))  # stored in packs, not inline
    _wait_until_published(mounted)
    os.rename(d / "f00", d / "renamed")
    os.rename(d / "f01", mounted.path / "moved-out")
    os.rename(d / "f40", d / "f39")  # over an existing file
    os.chmod(d / "f02", 0o600)
    os.utime(d / "f03", ns=(1_000_000_000, 2_000_000_000))
    os.unlink(d / "f04")
    (d / "f05").write_bytes(b"rewritten, not fsync'd")
    (d / "new").write_bytes(b"new file")
    os.setxattr(d / "f06", "user.tag", b"v")
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "sub" / "deeper" / "leaf").write_bytes(b"leaf")
    os.symlink("f07", d / "link")
    os.chmod(d / "sub", 0o711)
    expected = _snapshot(mounted.path)
    assert len(expected) == 45

    mounted.kill()  # nothing of that was fsync'd: only the journal and the cache files have it
    mounted.mount()
    assert _snapshot(mounted.path) == expected
    assert (d / "f03").stat().st_mtime_ns == 2_000_000_000
    assert sorted(os.listdir(mounted.path)) == ["d", "moved-out"]  # nothing half-visible
    mounted.unmount()  # uploads and publishes what the journal resumed
    mounted.drop_cache()
    mounted.mount()
    assert _snapshot(mounted.path) == expected
    assert (d / "f03").stat().st_mtime_ns == 2_000_000_000


def _downgrade_journal_to_format_1(path: Path) -> None:
    """Rewrite a journal the way pluto wrote it before per-entry rows: one CBOR blob per folder
    ([1, own attributes, child rows, never published]; child rows had today's entry layout)."""
    import cbor2

    db = sqlite3.connect(path, isolation_level=None)
    folders = db.execute("SELECT writer, cap, seq, attrs, new FROM folders WHERE dirty=1").fetchall()
    db.execute("BEGIN")
    db.execute("CREATE TABLE dirs (writer BLOB PRIMARY KEY, cap TEXT NOT NULL, seq INTEGER NOT NULL, "
               "state BLOB NOT NULL)")
    for writer, cap, seq, attrs, new in folders:
        rows = [cbor2.loads(e) for (e,) in db.execute("SELECT entry FROM entries WHERE writer=?", (writer,))]
        state = cbor2.dumps([1, cbor2.loads(attrs), rows, bool(new)])
        db.execute("INSERT INTO dirs VALUES (?,?,?,?)", (writer, cap, seq, state))
    db.execute("DROP TABLE folders")
    db.execute("DROP TABLE entries")
    db.execute("PRAGMA user_version=0")
    db.execute("COMMIT")
    db.close()


def test_a_journal_left_by_an_older_pluto_is_migrated_and_resumes(mounted: MountedVolume) -> None:
    src = STDLIB / "json"
    res = subprocess.run(["rsync", "-a", f"{src}/", str(mounted.path / "json")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    mounted.kill()
    journal = mounted.home.cache / "journal.sqlite"
    _downgrade_journal_to_format_1(journal)
    mounted.mount()  # migrates, then resumes
    assert _diff(src, mounted.path / "json").returncode == 0
    assert sorted(os.listdir(mounted.path)) == ["json"]
    mounted.remount_fresh()
    assert _diff(src, mounted.path / "json").returncode == 0


def test_chmod_of_a_folder_not_listed_since_mount_keeps_its_entries(mounted: MountedVolume) -> None:
    keep = mounted.path / "keep"
    keep.mkdir()
    for name in ("a", "b", "c"):
        (keep / name).write_bytes(name.encode())
    mounted.unmount()
    mounted.mount()
    os.chmod(keep, 0o700)  # looked up in its parent, but its own entries were never loaded
    mounted.kill()
    mounted.mount()
    assert sorted(os.listdir(keep)) == ["a", "b", "c"]
    assert stat.S_IMODE(keep.stat().st_mode) == 0o700
    mounted.remount_fresh()
    assert sorted(os.listdir(keep)) == ["a", "b", "c"] and (keep / "b").read_bytes() == b"b"
    assert stat.S_IMODE(keep.stat().st_mode) == 0o700


def test_a_file_renamed_over_an_acknowledged_one_never_leaves_the_name_empty_on_the_network(
        mounted: MountedVolume) -> None:
    """rsync and editors write a temporary file and rename it over the target. While the new bytes
    are not uploaded, the folder's published version must keep the old file under that name: a crash
    then (the machine lost) brings back the old bytes, never nothing. Found by the fault checker."""
    target = mounted.path / "report.txt"
    with open(target, "wb") as f:
        f.write(b"acknowledged version")
        f.flush()
        os.fsync(f.fileno())
    tmp = mounted.path / ".report.txt.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644)  # kept open: the write-back leaves its bytes for later
    os.write(fd, b"new version, not uploaded yet")
    os.rename(tmp, target)
    (mounted.path / "other.txt").write_bytes(b"makes the root publish meanwhile")
    _wait_until_listed(mounted, "other.txt")  # the root was published after the rename
    mounted.kill()  # the machine is lost before the new bytes are uploaded
    with contextlib.suppress(OSError):
        os.close(fd)  # the mount is gone
    mounted.drop_cache()
    mounted.mount()
    assert (mounted.path / "report.txt").read_bytes() in (b"acknowledged version", b"new version, not uploaded yet")


def _wait_until_listed(mounted: MountedVolume, name: str, timeout: float = 60.0) -> None:
    """Until `pluto ls /` (the network's view, from a fresh process) lists `name`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", "ls", "/", "--home", str(mounted.home.path)],
                             capture_output=True, text=True, timeout=60)
        if res.returncode == 0 and any(line.endswith(" " + name) for line in res.stdout.splitlines()):
            return
        time.sleep(0.3)
    raise AssertionError(f"{name} not published within {timeout:g} s")
