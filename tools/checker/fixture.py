"""The grid and the mounts a run works on: start them, break them, bring them back, tear them down.

One LocalGrid (coordinator + peers as real processes) and one or two
`pluto mount -f` processes (pluto_fs.grid.testing.MountedVolume). Two mounts are
two devices of one user: the second home is restored from the first one's
24 words with `pluto restore`, as on a new machine.

`close()` is safe to call at any point, also after a crash halfway through
`start()`: it thaws every peer (a SIGSTOPped process would ignore SIGTERM),
kills the mounts, unmounts lazily and stops the grid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptree.identity import new_seed, seed_to_phrase
from pluto_fs.grid.localgrid import LocalGrid, child_env
from pluto_fs.grid.testing import MountedVolume, wait_for_placement
from pluto_fs.home import Config, Home
from pluto_fs.mount.run import is_mounted

from .settings import Settings


@dataclass
class Mount:
    """One workload mount and what the run knows about it."""

    index: int
    vol: MountedVolume
    up: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one kill or remount at a time
    generation: int = 0  # bumps at every (re)mount: a root descriptor from an older one is stale
    dev: int = 0  # st_dev of the mounted root, to tell it from the directory under the mountpoint
    expected_down: bool = False  # killed on purpose (by the nemesis or the teardown)


class Cluster:
    """Grid + mounts for one run."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self.grid: LocalGrid | None = None
        self.mounts: list[Mount] = []
        self.extra: list[MountedVolume] = []  # fresh mounts of the final checks
        self.words = ""
        self._mountpoints: list[Path] = []

    # ---- start ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the grid and the first home and mount.

        The grid is built here rather than by testing.start_mounted_volume, so that `self.grid`
        exists before its first process does: an interrupted start still gets torn down."""
        s = self.settings
        home = Home(self.root / "m0" / "home")
        # The peers are this user's own: their capacity is its storage-exchange allowance.
        self.grid = LocalGrid(self.root / "m0" / "grid", peers=s.peers, capacity="4G", heartbeat=0.5,
                              owner=home.device_id())
        self.grid.start()
        assert self.grid.coordinator is not None
        seed = new_seed()
        home.create(seed, Config(coordinator=self.grid.coordinator.address))
        self._tune(home)
        self.words = seed_to_phrase(seed)
        wait_for_placement(home, s.peers)
        self.mounts.append(Mount(0, self._volume(self.root / "m0", home, s.op_timeout)))
        self._mount(self.mounts[0])

    def start_devices(self) -> None:
        """The other devices of the same user: homes restored from the words, each mounted."""
        for i in range(1, self.settings.mounts):
            home = self.restore_home(self.root / f"m{i}" / "home")
            self.mounts.append(Mount(i, self._volume(self.root / f"m{i}", home, self.settings.op_timeout)))
            self._mount(self.mounts[i])

    def _tune(self, home: Home) -> None:
        """Short network timeouts and a frequent background audit, so a run moves on while peers are frozen."""
        config = home.config()
        config.request_timeout = self.settings.request_timeout
        config.audit_interval = self.settings.audit_interval
        home.save_config(config)

    def _volume(self, root: Path, home: Home, timeout: float) -> MountedVolume:
        mnt = Path(tempfile.mkdtemp(prefix="pluto-checker-mnt-")) / "mnt"
        self._mountpoints.append(mnt)
        assert self.grid is not None
        return MountedVolume(root, self.grid, home, mnt, timeout)

    def restore_home(self, path: Path) -> Home:
        """A new home restored from the run's 24 words with `pluto restore` (a new device)."""
        assert self.grid is not None and self.grid.coordinator is not None
        res = self.cli(None, "restore", "--home", str(path), "--coordinator", self.grid.coordinator.address,
                       stdin=self.words, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"pluto restore exited {res.returncode}: {res.stderr.strip()[-500:]}")
        home = Home(path)
        self._tune(home)
        return home

    def fresh_mount(self, home: Home, name: str) -> MountedVolume:
        """Mount `home` (a final-check device) with a generous timeout; torn down by close()."""
        vol = self._volume(self.root / name, home, timeout=30.0)
        self.extra.append(vol)
        vol.mount()
        return vol

    # ---- commands ---------------------------------------------------------------------

    def cli(self, home: Home | None, *args: str, stdin: str | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run `pluto ARGS` (with --home of `home` when given) and capture its output."""
        home_args = ["--home", str(home.path)] if home is not None else []
        return _run([sys.executable, "-m", "pluto_fs.cli.main", *args, *home_args], stdin, timeout)

    def python(self, module: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run `python -m MODULE ARGS` in a fresh process and capture its output."""
        return _run([sys.executable, "-m", module, *args], None, timeout)

    # ---- peers ------------------------------------------------------------------------

    @property
    def peers(self) -> int:
        """How many storage peers the grid has."""
        return len(self.grid.storage) if self.grid else 0

    def kill_peer(self, i: int) -> None:
        """kill -9 storage peer `i`."""
        assert self.grid is not None
        self.grid.thaw_peer(i)
        self.grid.storage[i].kill()

    def restart_peer(self, i: int) -> None:
        """Start peer `i` again on its port with its store (after a kill)."""
        assert self.grid is not None
        self.grid.thaw_peer(i)
        self.grid.restart_peer(i)

    def freeze_peer(self, i: int) -> None:
        """SIGSTOP peer `i`."""
        assert self.grid is not None
        self.grid.freeze_peer(i)

    def thaw_peer(self, i: int) -> None:
        """SIGCONT peer `i`."""
        assert self.grid is not None
        self.grid.thaw_peer(i)

    def wipe_peer(self, i: int) -> None:
        """Peer `i` loses its disk but keeps its key, and comes back empty."""
        assert self.grid is not None
        self.grid.thaw_peer(i)
        self.grid.wipe_peer(i)

    def heal(self) -> list[int]:
        """Thaw every peer and start every dead one again; return the ones restarted."""
        assert self.grid is not None
        restarted = []
        for i, p in enumerate(self.grid.storage):
            self.grid.thaw_peer(i)
            if not p.alive():
                self.grid.restart_peer(i)
                restarted.append(i)
        return restarted

    # ---- mounts -----------------------------------------------------------------------

    def _mount(self, m: Mount) -> None:
        m.vol.mount(wait=60)
        m.dev = os.stat(m.vol.path).st_dev
        m.generation += 1
        m.expected_down = False
        m.up.set()

    def kill_mount(self, i: int, lose_cache: bool = False) -> None:
        """kill -9 mount `i`; with `lose_cache` also delete its cache and journal (the machine is gone)."""
        m = self.mounts[i]
        with m.lock:
            m.up.clear()
            m.expected_down = True
            m.vol.kill()
            if lose_cache:
                m.vol.drop_cache()

    def remount(self, i: int) -> None:
        """Mount home `i` again (its journal resumes); RuntimeError if it does not come up."""
        m = self.mounts[i]
        with m.lock:
            m.vol.kill()  # whatever is left of the old process and its mount
            self._mount(m)

    def open_root(self, i: int) -> tuple[int, int] | None:
        """(generation, descriptor of the mounted root) of mount `i`, or None if it is not up right now."""
        m = self.mounts[i]
        if not m.up.is_set():
            return None
        generation, dev = m.generation, m.dev
        try:
            fd = os.open(m.vol.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        if os.fstat(fd).st_dev != dev or m.generation != generation or not m.up.is_set():
            os.close(fd)  # the mount went away meanwhile: this is the directory under it
            return None
        return generation, fd

    def died(self, i: int) -> int | None:
        """Exit code of mount `i` if its process ended without being killed on purpose, else None."""
        m = self.mounts[i]
        proc = m.vol.proc
        if m.expected_down or not m.up.is_set() or proc is None:
            return None
        return proc.poll()

    def mark_dead(self, i: int) -> None:
        """Mount `i` died by itself: stop workers using it and detach the dead mount."""
        m = self.mounts[i]
        with m.lock:
            m.up.clear()
            m.expected_down = True
            m.vol.kill()

    def log_tail(self, vol: MountedVolume, lines: int = 12) -> str:
        """The last lines of a mount's log, from its last traceback if there is one."""
        try:
            text = vol.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        start = max((i for i, line in enumerate(text) if line.startswith("Traceback")), default=len(text) - lines)
        return "\n".join(text[max(0, start):][-40:])

    def stop_mount(self, vol: MountedVolume, wait: float) -> tuple[int | None, float]:
        """Clean unmount (SIGTERM: upload what is pending, then unmount): (exit code or None if it
        did not finish within `wait` and was killed, seconds taken)."""
        start = time.monotonic()
        code: int | None = None
        proc = vol.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(wait)
            except subprocess.TimeoutExpired:
                code = None
        elif proc is not None:
            code = proc.returncode
        vol.kill()  # kills what is left and detaches the mount lazily
        return code, time.monotonic() - start

    # ---- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """Thaw, kill and unmount everything this run started; safe at any point, and twice."""
        if self.grid is not None:
            for i in range(len(self.grid.storage)):
                try:
                    self.grid.thaw_peer(i)
                except (OSError, ValueError):
                    pass
        for m in self.mounts:
            m.up.clear()
            m.expected_down = True
            m.vol.kill()
        for vol in self.extra:
            vol.kill()
        if self.grid is not None:
            self.grid.stop()
        for mnt in self._mountpoints:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            if not is_mounted(mnt):
                shutil.rmtree(mnt.parent, ignore_errors=True)  # the empty mountpoint and its temp parent


def _run(argv: list[str], stdin: str | None, timeout: float) -> subprocess.CompletedProcess:
    """Run `argv` with this checkout on PYTHONPATH; a timeout comes back as exit code -9 with a note
    in stderr, never as an exception (a hung command is a finding, not a checker crash)."""
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=child_env(),
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, -9, _text(exc.stdout),
                                           _text(exc.stderr) + f"\n(timed out after {timeout:g} s)")


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
