"""A real mount for tests and benchmarks: grid processes plus a `pluto mount -f` process.

Lives in the package (not under tests/) because the benchmarks use it too.
Teardown always unmounts lazily (`fusermount3 -u -z`) and kills what is
left, so a failed test never leaves a stuck mount behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptree.identity import new_seed
from pluto_fs.grid.localgrid import LocalGrid, child_env, wait_for_peers
from pluto_fs.home import Config, Home
from pluto_fs.mount.run import is_mounted
from pluto_fs.store.packs import DEFAULT_N


@dataclass
class MountedVolume:
    """A pluto mount process over a LocalGrid."""

    root: Path
    grid: LocalGrid
    home: Home
    path: Path
    timeout: float = 30.0
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "mount.log"

    def mount(self, wait: float = 60.0) -> None:
        """Start `pluto mount -f` and wait until the kernel shows the mount."""
        self.path.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pluto_fs.cli.main", "--log-level", "info", "mount", "-f", str(self.path),
                "--home", str(self.home.path), "--allow-other", "--timeout", str(self.timeout)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env())
        deadline = time.monotonic() + wait
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"pluto mount exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"pluto mount did not come up in {wait:g} s; see {self.log_path}")
            time.sleep(0.05)

    def unmount(self, wait: float = 300.0) -> None:
        """Clean unmount: SIGTERM, which uploads everything pending first."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        self._lazy_unmount()

    def kill(self) -> None:
        """kill -9 of the mount process (a crash), then detach the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                # A thread stuck in the kernel on its own mount keeps a killed process from dying,
                # and so the mount from going away: abort the FUSE connection, as a person would.
                abort_fuse_connection(self.path)
                self.proc.wait(30)
        self.proc = None
        self._lazy_unmount()

    def _lazy_unmount(self) -> None:
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)

    def reconfigure(self, **fields: object) -> None:
        """Set config.json fields (e.g. request_timeout=60.0) and remount so the mount uses them."""
        config = self.home.config()
        for name, value in fields.items():
            if not hasattr(config, name):
                raise AttributeError(f"Config has no field {name!r}")
            setattr(config, name, value)
        self.home.save_config(config)
        self.unmount()
        self.mount()

    def drop_cache(self) -> None:
        """Remove the local cache so the next mount reads everything from peers (unmounted only)."""
        assert self.proc is None
        import shutil

        shutil.rmtree(self.home.path / "cache", ignore_errors=True)

    def remount_fresh(self) -> None:
        """Unmount (uploading what is pending), forget the local cache and journal, mount again:
        from here on everything comes from the peers, as on a new machine."""
        self.unmount()
        self.drop_cache()
        self.mount()

    def close(self) -> None:
        """Tear everything down, whatever state it is in."""
        try:
            self.unmount(wait=60)
        finally:
            self.kill()
            self.grid.stop()


def start_mounted_volume(root: Path, peers: int = DEFAULT_N, timeout: float = 30.0, own_peers: bool = True,
                         grace: str = "1G", capacity: str = "4G") -> MountedVolume:
    """Grid + fresh identity + mount, ready for use.

    With `own_peers`, the grid's peers count as this user's (their capacity is
    its storage-exchange allowance); otherwise it lives on `grace` alone.
    """
    root.mkdir(parents=True, exist_ok=True)
    home = Home(root / "home")
    # The peers are this user's own: their capacity is what the storage exchange lets it store.
    grid = LocalGrid(root / "grid", peers=peers, capacity=capacity, heartbeat=0.5,
                     owner=home.device_id() if own_peers else None, grace=grace)
    grid.start()
    try:
        home.create(new_seed(), Config(coordinator=grid.coordinator.address))
        wait_for_placement(home, peers)
        # The mountpoint sits outside `root` in a world-traversable directory, so tests that
        # switch to another uid (permission checks through allow_other) can reach it.
        import tempfile

        mnt_parent = Path(tempfile.mkdtemp(prefix="pluto-mnt-"))
        os.chmod(mnt_parent, 0o755)
        vol = MountedVolume(root, grid, home, mnt_parent / "mnt", timeout)
        vol.mount()
        return vol
    except BaseException:
        grid.stop()
        raise


def wait_for_placement(home: Home, want: int) -> None:
    """Until the coordinator offers `want` peers for placement to `home` (at most 30 s)."""
    import trio

    trio.run(wait_for_peers, home, want)


def abort_fuse_connection(mountpoint: Path) -> bool:
    """Abort the FUSE connection behind `mountpoint` (/sys/fs/fuse/connections/N/abort); False if it is
    not a FUSE mount or the control filesystem cannot be reached. Every request waiting on it fails
    with ENOTCONN, so nothing stays blocked on a daemon that cannot answer."""
    minor = None
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:  # not stat(): that would wait on the stuck daemon too
        for line in f:
            fields = line.split()
            if fields[4].replace("\\040", " ") == target and " - fuse" in line:
                minor = fields[2].split(":")[1]
    if minor is None:
        return False
    control = Path("/sys/fs/fuse/connections")
    if not (control / minor).exists():
        subprocess.run(["mount", "-t", "fusectl", "none", str(control)], capture_output=True)
    abort = control / minor / "abort"
    try:
        abort.write_text("1")
    except OSError:
        return False
    return True
