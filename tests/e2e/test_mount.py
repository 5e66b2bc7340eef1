"""Real mounts over real peers: rsync of the standard library, crashes, lost peers."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pluto_fs.testing import MountedVolume, start_mounted_volume

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
    mounted.unmount()
    mounted.drop_cache()  # everything now comes from the peers
    mounted.mount()
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
    time.sleep(8)
    mounted.kill()  # kill -9 of the mount process, mid-rsync and mid-write
    stop.set()
    writer.join(60)
    rsync.wait(60)
    assert len(acked) >= 5, "the writer should have had several files acknowledged before the crash"

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
    mounted.unmount()
    mounted.drop_cache()
    mounted.mount()
    assert (mounted.path / "queued.txt").read_bytes() == b"written while the network is away"
    assert os.listdir(mounted.path / "far" / "away") == ["f"]
