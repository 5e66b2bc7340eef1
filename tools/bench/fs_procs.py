"""Helpers of the filesystem benchmark (tools/bench/fs.py): /proc readings, an RSS sampler, gocryptfs.

Everything here reads Linux /proc files and starts or stops processes that
the benchmark owns; nothing is pluto-specific except the status file reader.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024


# ---- /proc readings ------------------------------------------------------------------


def status_kib(pid: int | None, key: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, ...), or None if the process is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_hwm(pid: int | None) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS (`echo 5 > clear_refs`, root only)."""
    if pid is None:
        return
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, ValueError, IndexError):
        return None


def io_counters(pid: int | None) -> dict[str, int]:
    """/proc/PID/io as a dict (rchar, wchar, read_bytes, write_bytes, ...); empty if gone."""
    if pid is None:
        return {}
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}
    except (OSError, ValueError):
        return {}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already counted in user
    return (total - idle) / TICKS, total / TICKS


def drop_caches() -> None:
    """`sync; echo 3 > /proc/sys/vm/drop_caches` (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def is_mounted(path: Path) -> bool:
    """True if `path` is a mountpoint right now."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f)


# ---- sampling -------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Reads VmRSS of named processes every `interval` s; keeps the peak per (name, phase).

    `pids()` is called on every tick, so a process that is restarted (the pluto
    mount, between the copy and the cold read) is followed under its name.
    """

    def __init__(self, pids: Callable[[], dict[str, int | None]], interval: float = 0.2) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self._pids = pids
        self.interval = interval
        self.phase: str | None = None
        self.peaks: dict[tuple[str, str], int] = {}  # (process name, phase) -> peak VmRSS KiB
        self.samples = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def set_phase(self, phase: str | None) -> None:
        """Attribute following samples to `phase` (None: not recorded)."""
        with self._lock:
            self.phase = phase
        if phase is not None:
            self._sample()  # one sample at the very start of the phase

    def peak(self, name: str, phase: str) -> int | None:
        """Peak VmRSS (KiB) of `name` seen during `phase`."""
        with self._lock:
            return self.peaks.get((name, phase))

    def _sample(self) -> None:
        try:
            pids = self._pids()
        except Exception:
            return
        with self._lock:
            phase = self.phase
            if phase is None:
                return
            for name, pid in pids.items():
                rss = status_kib(pid, "VmRSS")
                if rss is not None:
                    key = (name, phase)
                    self.peaks[key] = max(self.peaks.get(key, 0), rss)
            self.samples += 1

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        """End the thread (idempotent)."""
        self._halt.set()
        if self.is_alive():
            self.join(2)


@dataclass
class PhaseMeter:
    """Wall time, CPU per process, VmHWM per process and machine CPU for one timed phase."""

    pids: dict[str, int | None]
    reset_peaks: bool = True  # reset VmHWM at the start (False: the phase continues an earlier one)
    own_cpu: Callable[[], float] | None = None  # CPU seconds of every process of the benchmark, so far
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process
    hwm: dict[str, int] = field(default_factory=dict)  # VmHWM KiB at the end (reset at the start)
    busy_cores: float = 0.0  # whole machine, average over the phase
    others_cores: float = 0.0  # cores used by processes that are not the benchmark's (noise)
    _t0: float = 0.0
    _own0: float = 0.0
    _cpu0: dict[str, float] = field(default_factory=dict)
    _m0: tuple[float, float] = (0.0, 0.0)

    def __enter__(self) -> PhaseMeter:
        for name, pid in self.pids.items():
            if self.reset_peaks:
                reset_hwm(pid)
            c = cpu_seconds(pid)
            if c is not None:
                self._cpu0[name] = c
        self._own0 = self.own_cpu() if self.own_cpu else 0.0
        self._m0 = machine_cpu()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        busy, _total = machine_cpu()
        self.busy_cores = (busy - self._m0[0]) / self.wall if self.wall > 0 else 0.0
        if self.own_cpu is not None and self.wall > 0:
            own = self.own_cpu() - self._own0
            self.others_cores = max(0.0, (busy - self._m0[0] - own) / self.wall)
        for name, pid in self.pids.items():
            c = cpu_seconds(pid)
            if c is not None and name in self._cpu0:
                self.cpu[name] = c - self._cpu0[name]
            h = status_kib(pid, "VmHWM")
            if h is not None:
                self.hwm[name] = h

    def cores(self, name: str) -> float | None:
        """Average cores used by `name` over the phase (1.0 = one core busy all along)."""
        c = self.cpu.get(name)
        return None if c is None or self.wall <= 0 else c / self.wall


# ---- py-spy (optional profiling) ----------------------------------------------------------------


class Profiler:
    """`py-spy record` attached to a process for the length of a phase (raw collapsed stacks)."""

    def __init__(self, pyspy: str, pid: int, out: Path, rate: int = 100) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [pyspy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", str(rate), "--threads",
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=open(str(out) + ".log", "wb"),
        )

    def stop(self) -> None:
        """Stop recording; py-spy writes its file on SIGINT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- pluto status file -------------------------------------------------------------------------


def read_status(path: Path) -> dict | None:
    """The pluto mount's status file (HOME/cache/mount.json), or None if absent or half-written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- gocryptfs -----------------------------------------------------------------------------------


class GocryptfsMissing(RuntimeError):
    """gocryptfs is not installed."""


def gocryptfs_binary() -> str:
    """Path of the gocryptfs binary, or GocryptfsMissing with what to do."""
    path = shutil.which("gocryptfs")
    if path is None:
        raise GocryptfsMissing(
            "gocryptfs is not installed (tools/setup does not install it): run `apt-get install -y gocryptfs`"
        )
    return path


def gocryptfs_version(binary: str) -> str:
    """First line of `gocryptfs -version`."""
    out = subprocess.run([binary, "-version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "unknown"


@dataclass
class Gocryptfs:
    """A gocryptfs volume under `root`: cipherdir, password file, mountpoint, `-fg` process."""

    root: Path
    binary: str
    scryptn: int = 10
    proc: subprocess.Popen | None = None

    @property
    def cipher(self) -> Path:
        return self.root / "cipher"

    @property
    def path(self) -> Path:
        return self.root / "mnt"

    @property
    def passfile(self) -> Path:
        return self.root / "password"

    @property
    def log_path(self) -> Path:
        return self.root / "gocryptfs.log"

    def init(self) -> None:
        """`gocryptfs -init` with a random password in a file (scrypt cost lowered so init is fast)."""
        self.cipher.mkdir(parents=True, exist_ok=True)
        self.passfile.write_text(os.urandom(16).hex() + "\n")
        self.passfile.chmod(0o600)
        subprocess.run([self.binary, "-init", "-q", "-passfile", str(self.passfile), "-scryptn", str(self.scryptn),
                        str(self.cipher)], check=True, capture_output=True)

    def mount(self, wait: float = 30.0) -> None:
        """Mount in the foreground (`-fg`), so `proc` is the gocryptfs process itself."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-fg", "-q", "-passfile", str(self.passfile), str(self.cipher), str(self.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + wait
        while not is_mounted(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"gocryptfs exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"gocryptfs did not mount in {wait:g} s; see {self.log_path}")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def close(self) -> None:
        """Unmount (lazily if busy) and make sure the process is gone."""
        if is_mounted(self.path):
            r = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def page_digests(path: Path, page: int = 4096) -> list[bytes]:
    """A short hash of every `page` bytes of a file (to count the pages an edit changed)."""
    import hashlib

    out = []
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(page * 256)
            if not block:
                break
            for off in range(0, len(block), page):
                out.append(hashlib.blake2b(block[off : off + page], digest_size=8).digest())
    return out


def changed_bytes(before: list[bytes], after: list[bytes], page: int = 4096) -> int:
    """Bytes in pages that differ (or were added/removed) between two page_digests lists."""
    common = min(len(before), len(after))
    diff = sum(1 for i in range(common) if before[i] != after[i])
    return (diff + abs(len(before) - len(after))) * page
