"""Filesystem benchmark: a pluto mount and a gocryptfs mount, measured side by side on this machine.

Run (as root, from the repository root):

    /work/venv/bin/python tools/bench/fs.py [--repeat 3] [--size 1G] [--quick]

It starts a local grid (coordinator + 5 storage peers, 3-of-5) with a pluto
mount over it (pluto_fs.grid.testing.start_mounted_volume) and a gocryptfs volume
(`-init -passfile -scryptn 10`, cipherdir in the same work directory, so on
the same disk as the grid), then runs every measurement on both, interleaved
(pluto run 1, gocryptfs run 1, pluto run 2, ...):

1. `cp` of a random file (generated on local disk before anything is timed,
   one per repeat so no run can deduplicate against an earlier one) into the
   mount: MB/s when `cp` returns ("accepted") and when a following fsync of
   the destination returns ("durable": on pluto, on >= happy peers).
2. cold read (`cat > /dev/null`) of that file after `sync; echo 3 >
   /proc/sys/vm/drop_caches`; for pluto also unmount, remove the local cache
   and mount again, so every byte comes from the peers.
3. `rsync -a` of the Python standard library (site-packages excluded), then
   the time until it is durable (pluto: nothing left to upload; gocryptfs:
   `sync`), then `diff -r` against the source.
4. an edit of 1 MiB in the middle of a stored 256 MiB file, then fsync: what
   goes out (pluto: fragment bytes sent to peers and new sealed chunk bytes,
   from the mount's status file; gocryptfs: bytes written to its cipherdir).
5. peak RSS of the pluto mount, its storage peers, its coordinator and
   gocryptfs during 1-3 (VmRSS sampled every 0.2 s, and VmHWM reset at the
   start of each phase), plus CPU use per phase.

Results: a table on stdout, `docs/BENCHMARKS.md` (the "Filesystem: pluto vs
gocryptfs" section) and `docs/bench-ratios.png`. `--quick` (128 MiB file,
64 MiB edit file, one repeat, a small tree) smoke-tests the harness and
writes its report to a temporary directory, not docs/. Every mount and
process started here is unmounted and stopped on every exit path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and
# tools/bench/transport.py would shadow the `transport` package: put the
# repository root there instead.
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tools.bench.fs_procs import (  # noqa: E402
    Gocryptfs,
    GocryptfsMissing,
    PhaseMeter,
    Profiler,
    RssSampler,
    changed_bytes,
    cpu_seconds,
    drop_caches,
    gocryptfs_binary,
    gocryptfs_version,
    io_counters,
    is_mounted,
    machine_cpu,
    page_digests,
    read_status,
)
from tools.bench.fs_report import NOISY_CORES, markdown, plot, summarize, update_benchmarks_md  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024
GIB = 1024 * MIB
STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUICK_TREE = STDLIB / "idlelib"
EXCLUDES = ("site-packages",)
MIN_PEER_CAPACITY = 4 * GIB  # what start_mounted_volume gives each peer by default


def raw_bytes_stored(s: Settings, tree_bytes: int) -> int:
    """Fragment bytes the run may leave on all peers together: per repeat the big file (twice if
    the fallback copy is needed), the edit file and the tree, times n/k = 5/3, plus a fifth for
    duplicate uploads and metadata."""
    return int(s.repeat * (2 * s.size + s.edit_file + tree_bytes) * 5 / 3 * 1.2)


def peer_capacity(s: Settings, tree_bytes: int) -> int:
    """Capacity offered by each peer (a quota, not disk space taken).

    The storage exchange lets the user store what its *live* peers offer. A
    loaded machine makes heartbeats late, so peers drop out of the live set for
    a moment; sized so that two live peers still cover everything stored.
    """
    need = raw_bytes_stored(s, tree_bytes) // 2
    return max(MIN_PEER_CAPACITY, -(-need // GIB) * GIB)
IDLE_TIMEOUT = 1800.0  # longest wait for the pluto mount to finish uploading
QUIET_CORES = 0.15  # --wait-quiet waits until other processes use less than this

FSYNC_SCRIPT = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
timeouts = 0
while True:
    try:
        os.fsync(fd)
        break
    except OSError as e:
        if e.errno != errno.ETIMEDOUT or timeouts >= 100:
            raise
        timeouts += 1
os.close(fd)
print(timeouts)
"""

EDIT_SCRIPT = """
import os, sys
path, patch, offset = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(patch, "rb").read()
fd = os.open(path, os.O_RDWR)
assert os.pwrite(fd, data, offset) == len(data)
os.fsync(fd)
os.close(fd)
"""


@dataclass
class Settings:
    """Knobs of one run (defaults match the issue)."""

    repeat: int = 3
    size: int = GIB
    edit_file: int = 256 * MIB
    edit_size: int = MIB
    tree: Path = STDLIB
    workdir: Path | None = None  # parent of the run's temporary directory
    op_timeout: float = 30.0  # the pluto mount's --timeout (its default)
    keep: bool = False
    verify: bool = True
    profile: Path | None = None
    quick: bool = False
    wait_quiet: float = 0.0  # before each round, wait up to this long for other processes to go quiet
    audits: bool = False  # keep the mount's periodic background audit (default: pushed out of the run)


def parse_size(text: str) -> int:
    """'1G', '128M', '512K' or bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw) -> float:
    """Run a command to completion (it must succeed); return its wall time in seconds."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, **kw)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))} exited with {r.returncode}")
    return dt


def try_run(argv: list[str], **kw) -> bool:
    """Run a command to completion; True if it succeeded."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, **kw).returncode == 0


def fsync_file(path: Path) -> int:
    """fsync `path` from a separate process; return how many times it failed with ETIMEDOUT first."""
    out = subprocess.run([sys.executable, "-c", FSYNC_SCRIPT, str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"fsync of {path} failed: {out.stderr.strip().splitlines()[-1:]}")
    return int(out.stdout.strip() or 0)


def tree_size(tree: Path) -> tuple[int, int]:
    """(files, bytes) under `tree`, site-packages excluded (what rsync copies)."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDES]
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def random_file(path: Path, size: int) -> None:
    """`size` bytes from the OS CSPRNG (incompressible, like media and archives)."""
    piece = 8 * MIB
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(piece, left)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def warm(path: Path) -> None:
    """Read a source file so it comes from the page cache for both file systems."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MIB):
            pass


def same_bytes(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class Bench:
    s: Settings
    root: Path
    big: list[Path] = field(default_factory=list)
    edits: list[Path] = field(default_factory=list)
    patches: list[Path] = field(default_factory=list)
    vol: object = None  # pluto_fs.grid.testing.MountedVolume
    goc: Gocryptfs | None = None
    sampler: RssSampler | None = None
    runs: dict = field(default_factory=lambda: {"pluto": [], "gocryptfs": []})
    warnings: list[str] = field(default_factory=list)
    capacity: int = MIN_PEER_CAPACITY  # offered by each storage peer
    _profilers: list[Profiler] = field(default_factory=list)

    # ---- processes ----

    def pids(self, fs: str) -> dict[str, int | None]:
        if fs == "gocryptfs":
            return {"gocryptfs": self.goc.pid if self.goc else None}
        vol = self.vol
        out: dict[str, int | None] = {}
        if vol is None:
            return out
        out["mount"] = vol.proc.pid if vol.proc is not None and vol.proc.poll() is None else None
        for i, p in enumerate(vol.grid.storage):
            out[f"peer{i}"] = p.proc.pid if p.alive() else None
        c = vol.grid.coordinator
        out["coordinator"] = c.proc.pid if c is not None and c.alive() else None
        return out

    def all_pids(self) -> dict[str, int | None]:
        return {**self.pids("pluto"), **self.pids("gocryptfs")}

    @contextmanager
    def phase(self, fs: str, r: int, name: str, result: dict, rss_key: str | None = None):
        """Time a phase and record its CPU use and peak RSS into `result`."""
        rss_key = rss_key or name
        pids = self.pids(fs)
        key = f"{fs}{r}:{rss_key}"
        if self.s.profile is not None and fs == "pluto" and r == 0:
            self.s.profile.mkdir(parents=True, exist_ok=True)
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            for who in ("mount", "peer0"):
                if pids.get(who):
                    self._profilers.append(Profiler(pyspy, pids[who], self.s.profile / f"{name}-{who}.txt"))
            time.sleep(0.5)  # let py-spy attach before the clock starts
        self.sampler.set_phase(key)
        meter = PhaseMeter(pids, reset_peaks=rss_key == name, own_cpu=self.own_cpu)
        try:
            with meter:
                yield meter
        finally:
            self.sampler.set_phase(None)
            for p in self._profilers:
                p.stop()
            self._profilers.clear()
        cpu = result.setdefault("cpu", {}).setdefault(name, {})
        cpu["machine"] = meter.busy_cores
        cpu["others"] = meter.others_cores
        if meter.others_cores > NOISY_CORES and meter.wall > 1:
            self.warn(f"{fs} repeat {r + 1}, {name}: other processes used {meter.others_cores:.2f} cores "
                      f"during the {meter.wall:.1f} s phase; that measurement is disturbed")
        for who in pids:
            c = meter.cores(who)
            if c is None:
                continue
            if who.startswith("peer"):
                cpu["peers"] = cpu.get("peers", 0.0) + c
                cpu["peer_max"] = max(cpu.get("peer_max", 0.0), c)
            else:
                cpu[who] = c
        rss = result.setdefault("rss", {})
        for who in pids:
            peak = max(self.sampler.peak(who, key) or 0, meter.hwm.get(who, 0))
            group = "peer" if who.startswith("peer") else who
            slot = rss.setdefault(group, {})
            slot[rss_key] = max(slot.get(rss_key, 0), peak)

    # ---- setup ----

    def generate(self) -> None:
        src = self.root / "src"
        src.mkdir()
        for r in range(self.s.repeat):
            for lst, name, size in ((self.big, "big", self.s.size), (self.edits, "edit", self.s.edit_file),
                                    (self.patches, "patch", self.s.edit_size)):
                p = src / f"{name}-{r}"
                random_file(p, size)
                lst.append(p)

    def start(self) -> None:
        from pluto_fs.grid.testing import start_mounted_volume

        log("starting the pluto grid (coordinator + 5 peers) and mount")
        import inspect

        kwargs = {}
        if "capacity" in inspect.signature(start_mounted_volume).parameters:
            kwargs["capacity"] = f"{self.capacity // GIB}G"
        self.vol = start_mounted_volume(self.root / "pluto", peers=5, timeout=self.s.op_timeout, **kwargs)
        cfg = self.vol.home.config()
        if not self.s.audits and hasattr(cfg, "audit_interval"):
            # The mount audits a sample of packs every audit_interval (600 s): a round walks the
            # whole tree and challenges peers, and would land in whichever phase runs then.
            # Push it out of the run (measure it on its own with --audits).
            import dataclasses

            self.vol.unmount()
            self.vol.home.save_config(dataclasses.replace(cfg, audit_interval=7 * 86400))
            self.vol.mount()
        log(f"pluto mounted on {self.vol.path}")
        self.goc = Gocryptfs(self.root / "gocryptfs", gocryptfs_binary())
        self.goc.init()
        self.goc.mount()
        log(f"gocryptfs mounted on {self.goc.path}")
        self.sampler = RssSampler(self.all_pids)
        self.sampler.start()

    def close(self) -> None:
        """Stop and unmount everything this run started, whatever state it is in."""
        steps = [lambda: [p.stop() for p in self._profilers]]
        if self.sampler is not None:
            steps.append(self.sampler.stop)
        if self.goc is not None:
            steps.append(self.goc.close)
        if self.vol is not None:
            vol = self.vol

            def pluto_down() -> None:
                try:
                    vol.close()
                finally:
                    if is_mounted(vol.path):
                        subprocess.run(["fusermount3", "-u", "-z", str(vol.path)], capture_output=True)
                    shutil.rmtree(vol.path.parent, ignore_errors=True)

            steps.append(pluto_down)
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def save_logs(self) -> Path:
        """Copy every log of the run (mount, grid, gocryptfs) to a new temporary directory."""
        dest = Path(tempfile.mkdtemp(prefix="pluto-fs-bench-logs-"))
        for p in self.root.rglob("*.log"):
            shutil.copy(p, dest / "-".join(p.relative_to(self.root).parts))
        return dest

    # ---- pluto helpers ----

    def status(self) -> dict:
        st = read_status(self.vol.home.path / "cache" / "mount.json")
        return st or {}

    def wait_pluto_idle(self, timeout: float = IDLE_TIMEOUT) -> tuple[dict, float]:
        """Wait for a status written after this call that shows nothing pending; (status, seconds waited)."""
        t0, since = time.perf_counter(), time.time()
        while True:
            st = self.status()
            if (st.get("updated", 0) > since and st.get("pending_files", 1) == 0
                    and st.get("pending_folders", 1) == 0):
                return st, time.perf_counter() - t0
            if self.vol.proc is None or self.vol.proc.poll() is not None:
                raise RuntimeError(f"the pluto mount died; see {self.vol.log_path}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"pluto still has uploads pending after {timeout:g} s: {st}")
            time.sleep(0.1)

    def peers_written(self) -> int:
        """Bytes the storage peers have written to their disks so far (write_bytes: fragments and index)."""
        return sum(io_counters(p.proc.pid).get("write_bytes", 0) for p in self.vol.grid.storage if p.alive())

    # ---- one repeat on each file system ----

    def round(self, fs: str, r: int) -> dict:
        """Every measurement once on one file system."""
        res: dict = {"repeat": r}
        mnt = self.vol.path if fs == "pluto" else self.goc.path
        self.wait_quiet()
        dst = self.write(fs, r, mnt, res)
        self.cold_read(fs, r, mnt, dst, res)
        self.tree(fs, r, mnt, res)
        edit_dst = self.edit(fs, r, mnt, res)
        s = self.s
        res["write_accept_mbps"] = s.size / MB / res["write_accept_s"]
        res["write_durable_mbps"] = s.size / MB / res["write_durable_s"]
        res["read_cold_mbps"] = s.size / MB / res["read_cold_s"]
        if res.get("write_bg_s"):
            res["write_bg_mbps"] = s.size / MB / res["write_bg_s"]
        res["rss_write_kib"] = res["rss"].get("mount" if fs == "pluto" else "gocryptfs", {}).get("write")
        if fs == "gocryptfs":  # keep the cipherdir small; pluto's peers keep everything (no deletion here)
            dst.unlink()
            edit_dst.unlink()
            shutil.rmtree(mnt / f"tree-{r}")
            os.sync()
        return res

    def write(self, fs: str, r: int, mnt: Path, res: dict) -> Path:
        """1. `cp` of the big file (accepted), then fsync of the destination (durable)."""
        src, dst = self.big[r], mnt / f"big-{r}"
        warm(src)
        os.sync()
        st0 = self.wait_pluto_idle()[0] if fs == "pluto" else {}
        with self.phase(fs, r, "write", res) as m1:
            run(["cp", str(src), str(dst)])
        with self.phase(fs, r, "durable", res, rss_key="write") as m2:
            timeouts = fsync_file(dst)
        res["write_accept_s"] = m1.wall
        res["write_durable_s"] = m1.wall + m2.wall
        res["fsync_timeouts"] = timeouts
        if timeouts:
            self.warn(f"{fs} repeat {r + 1}: fsync of the {self.s.size / MIB:g} MiB file failed {timeouts} time(s) "
                      f"with ETIMEDOUT (mount --timeout {self.s.op_timeout:g} s) and was called again; the durable "
                      "time includes the retries")
        log(f"{fs} {r + 1}: cp {m1.wall:.1f} s, + fsync {m2.wall:.1f} s ({timeouts} ETIMEDOUT)")
        if fs == "pluto":
            st1, _ = self.wait_pluto_idle()
            # Fragment bytes sent per byte written: 5/3 expected for 3-of-5 (plus padding).
            res["write_sent_per_byte"] = (st1["uploaded_bytes"] - st0["uploaded_bytes"]) / self.s.size
            # Columns cut off once `happy` were placed (a slow peer): left to repair, so they count here.
            res["write_columns_short"] = st1.get("columns_short", 0) - st0.get("columns_short", 0)
            if res["write_columns_short"]:
                log(f"pluto {r + 1}: {res['write_columns_short']} fragment columns left to repair")
        return dst

    def fresh_mount(self, res: dict) -> None:
        """pluto: unmount, remove the local cache, drop the page cache, mount again (reads come from peers)."""
        self.vol.unmount()
        self.vol.drop_cache()
        drop_caches()
        t0 = time.perf_counter()
        self.vol.mount()
        res["mount_s"] = time.perf_counter() - t0

    def cold_read(self, fs: str, r: int, mnt: Path, dst: Path, res: dict) -> None:
        """2. `cat` of the big file with nothing cached (pluto: from the peers)."""
        src = self.big[r]
        if fs == "pluto":
            self.fresh_mount(res)
        else:
            drop_caches()
        with self.phase(fs, r, "read", res) as m:
            ok = try_run(["cat", str(dst)], stdout=subprocess.DEVNULL)
        if ok and self.s.verify and not same_bytes(src, dst):
            raise RuntimeError(f"{fs}: {dst} does not match its source after the cold read")
        if not ok:
            if fs != "pluto":
                raise RuntimeError(f"{fs}: reading {dst} back failed")
            # The file was acknowledged by fsync but cannot be read back from the peers. Say so,
            # then measure the cold read on a copy made durable by the background upload alone.
            res["read_after_fsync_failed"] = True
            self.warn(f"pluto repeat {r + 1}: the file that fsync had acknowledged could not be read back after a "
                      f"remount with a fresh cache (EIO, see the mount log: 'a pack record is missing on every peer "
                      f"asked'); the cold read was measured on a second copy uploaded without fsync")
            log(f"pluto {r + 1}: READ-BACK FAILED after fsync; copying again without fsync")
            dst2 = mnt / f"big-{r}-bg"
            with self.phase(fs, r, "write_bg", res, rss_key="write_bg") as m:
                run(["cp", str(src), str(dst2)])
                self.wait_pluto_idle()
            res["write_bg_s"] = m.wall
            self.fresh_mount(res)
            with self.phase(fs, r, "read", res) as m:
                run(["cat", str(dst2)], stdout=subprocess.DEVNULL)
            if self.s.verify and not same_bytes(src, dst2):
                raise RuntimeError(f"pluto: {dst2} does not match its source after the cold read")
        res["read_cold_s"] = m.wall
        if fs == "pluto":
            st, _ = self.wait_pluto_idle()  # the mount started at 0: all it fetched is this read
            res["read_fetched_per_byte"] = st["downloaded_bytes"] / self.s.size
            res["read_fetches_hedged"] = st.get("fetches_hedged", 0)
        log(f"{fs} {r + 1}: cold read {m.wall:.1f} s"
            + (f" ({res['read_fetches_hedged']} fetches hedged)" if fs == "pluto" else ""))

    def tree(self, fs: str, r: int, mnt: Path, res: dict) -> None:
        """3. `rsync -a` of the tree, until durable, then `diff -r`."""
        s = self.s
        tree_dst = mnt / f"tree-{r}"
        os.sync()
        excludes = [f"--exclude={e}" for e in EXCLUDES]
        with self.phase(fs, r, "rsync", res) as m:
            run(["rsync", "-a", *excludes, f"{s.tree}/", f"{tree_dst}/"])
        res["rsync_s"] = m.wall
        if fs == "pluto":
            _, waited = self.wait_pluto_idle()
        else:
            t0 = time.perf_counter()
            os.sync()
            waited = time.perf_counter() - t0
        res["rsync_durable_s"] = m.wall + waited
        with self.phase(fs, r, "diff", res, rss_key="rsync") as m:
            run(["diff", "-r", *[f"-x{e}" for e in EXCLUDES], str(s.tree), str(tree_dst)],
                stdout=subprocess.DEVNULL)
        res["diff_s"] = m.wall
        log(f"{fs} {r + 1}: rsync {res['rsync_s']:.1f} s (durable after {res['rsync_durable_s']:.1f} s), "
            f"diff -r {m.wall:.1f} s")

    def edit(self, fs: str, r: int, mnt: Path, res: dict) -> Path:
        """4. Overwrite `edit_size` bytes in the middle of a stored file, fsync; count what goes out."""
        s = self.s
        edit_dst = mnt / f"edit-{r}"
        offset = s.edit_file // 2 - s.edit_size // 2
        # Store the file first. pluto: the background upload (no fsync: see the warning about
        # fsync racing with it); gocryptfs: fsync.
        if fs == "gocryptfs":
            before_names = set(os.listdir(self.goc.cipher))
        run(["cp", str(self.edits[r]), str(edit_dst)])
        if fs == "pluto":
            st0, _ = self.wait_pluto_idle()
            os.sync()
            written0 = self.peers_written()
        else:
            fsync_file(edit_dst)
            os.sync()
            new = [self.goc.cipher / n for n in set(os.listdir(self.goc.cipher)) - before_names]
            cipher_file = max(new, key=lambda p: p.stat().st_size)
            pages0 = page_digests(cipher_file)
            io0 = io_counters(self.goc.pid)
        res["edit_s"] = run([sys.executable, "-c", EDIT_SCRIPT, str(edit_dst), str(self.patches[r]), str(offset)])
        if fs == "pluto":
            st1, _ = self.wait_pluto_idle()
            res["edit_sent_bytes"] = st1["uploaded_bytes"] - st0["uploaded_bytes"]
            res["edit_packed_bytes"] = st1["chunk_bytes_packed"] - st0["chunk_bytes_packed"]
            res["edit_downloaded_bytes"] = st1["downloaded_bytes"] - st0["downloaded_bytes"]
            os.sync()
            res["edit_peer_disk_bytes"] = self.peers_written() - written0
        else:
            io1 = io_counters(self.goc.pid)
            os.sync()
            res["edit_sent_bytes"] = io1["write_bytes"] - io0["write_bytes"]
            res["edit_wchar"] = io1["wchar"] - io0["wchar"]
            res["edit_changed_bytes"] = changed_bytes(pages0, page_digests(cipher_file))
        if s.verify:
            self._check_edit(r, edit_dst, offset)
        log(f"{fs} {r + 1}: edit + fsync {res['edit_s']:.2f} s, {res['edit_sent_bytes'] / MIB:.2f} MiB out")
        return edit_dst

    # ---- noise ----

    def own_cpu(self) -> float:
        """CPU seconds used so far by every process of the benchmark (this one and its children too)."""
        t = os.times()
        total = t.user + t.system + t.children_user + t.children_system
        for pid in self.all_pids().values():
            c = cpu_seconds(pid)
            if c is not None:
                total += c
        return total

    def others(self, seconds: float = 1.0) -> float:
        """Cores used by processes that are not the benchmark's, over the next `seconds`."""
        own0, (busy0, _) = self.own_cpu(), machine_cpu()
        time.sleep(seconds)
        own1, (busy1, _) = self.own_cpu(), machine_cpu()
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / seconds)

    def wait_quiet(self) -> None:
        """Wait up to --wait-quiet seconds for other processes to stop using the CPU."""
        if self.s.wait_quiet <= 0:
            return
        deadline = time.monotonic() + self.s.wait_quiet
        while True:
            busy = self.others()
            if busy < QUIET_CORES:
                return
            if time.monotonic() > deadline:
                log(f"other processes still use {busy:.2f} cores; going on")
                return
            log(f"waiting for the machine to go quiet (other processes use {busy:.2f} cores)")
            time.sleep(4)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def _check_edit(self, r: int, path: Path, offset: int) -> None:
        """The bytes around the edit are the old ones, the edited ones the patch."""
        margin = 64 * 1024
        patch = self.patches[r].read_bytes()
        with open(self.edits[r], "rb") as f:
            f.seek(offset - margin)
            want = bytearray(f.read(2 * margin + len(patch)))
        want[margin : margin + len(patch)] = patch
        with open(path, "rb") as f:
            f.seek(offset - margin)
            got = f.read(len(want))
        if got != bytes(want) or path.stat().st_size != self.s.edit_file:
            raise RuntimeError(f"{path}: the edited file does not hold the expected bytes")


# ---- checks before anything starts ------------------------------------------------------------


def preflight(s: Settings, need_plot: bool) -> list[str]:
    """Problems that make the run impossible (each a line saying what to do)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root: dropping the page cache, resetting VmHWM and FUSE allow_other need it")
    try:
        gocryptfs_binary()
    except GocryptfsMissing as exc:
        problems.append(str(exc))
    for tool in ("rsync", "diff", "cmp", "cp", "cat", "fusermount3"):
        if shutil.which(tool) is None:
            package = "fuse3" if tool == "fusermount3" else tool
            problems.append(f"`{tool}` is not installed (apt-get install -y {package})")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing: this machine cannot mount FUSE file systems")
    if need_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            problems.append(f"matplotlib is missing: {sys.executable} -m pip install matplotlib "
                            "(the `bench` extra), or pass --no-plot")
    if not s.tree.is_dir():
        problems.append(f"tree to rsync not found: {s.tree}")
    if s.edit_file < 2 * s.edit_size + 256 * 1024:
        problems.append("--edit-file must be well larger than the edit")
    return problems


def disk_check(s: Settings, tree_bytes: int, where: Path) -> list[str]:
    """Is there room? Sources, the peers' fragments (n/k = 5/3), pluto's cache and the cipherdir."""
    # pluto may store the big file twice per repeat (the fallback copy when a read-back fails).
    per_repeat = 2 * s.size + s.edit_file + tree_bytes
    sources = s.repeat * (s.size + s.edit_file + s.edit_size)
    peers = s.repeat * per_repeat * 5 / 3 * 1.05
    cache = per_repeat * 1.1  # the mount keeps local copies of what it wrote since its last start
    cipher = per_repeat * 1.1  # gocryptfs files are removed after each repeat
    need = sources + peers + cache + cipher + 512 * MIB
    free = shutil.disk_usage(where).free
    out = []
    log(f"disk: about {need / GIB:.1f} GiB needed under {where}, {free / GIB:.1f} GiB free")
    if need > free * 0.9:
        out.append(f"not enough disk space under {where}: about {need / GIB:.1f} GiB needed, {free / GIB:.1f} GiB "
                   "free; lower --size or --repeat, or pick another --workdir")
    return out


# ---- machine and code ---------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    disk = "unknown disk"
    try:
        out = subprocess.run(["df", "--output=source,fstype", str(_ROOT)], capture_output=True, text=True).stdout
        src, fstype = out.splitlines()[1].split()
        disk = f"{fstype} on {src}"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "kernel": platform.release(),
            "python": platform.python_version(), "disk": disk,
            "gocryptfs": gocryptfs_version(gocryptfs_binary())}


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                "pluto_fs", "cryptree", "transport"], capture_output=True, text=True).stdout.strip()
        return f"commit {commit}" + (" with uncommitted changes" if dirty else "") if commit else "no git commit"
    except OSError:
        return "no git"


def code_digest() -> str:
    """SHA-256 (12 hex digits) of every .py file of pluto_fs/, cryptree/ and transport/ as they are on disk.

    The pluto mount is restarted during the run (cold read), so code changed on
    disk meanwhile would be measured from then on: the digest is taken at the
    start and at the end, and a difference is reported.
    """
    import hashlib

    digest = hashlib.sha256()
    for pkg in ("pluto_fs", "cryptree", "transport"):
        for path in sorted((_ROOT / pkg).rglob("*.py")):
            digest.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def format_table(results: dict) -> str:
    """Plain-text summary for the terminal."""
    lines = [f"{'metric':<68} {'pluto':>12} {'gocryptfs':>12} {'ratio':>8} {'target':>10}  verdict"]
    for row in summarize(results):
        m = row["metric"]
        pm = "–" if row["pluto_median"] is None else m.fmt.format(row["pluto_median"] / m.scale)
        gm = "–" if row["gocryptfs_median"] is None else m.fmt.format(row["gocryptfs_median"] / m.scale)
        ratio = "–" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        verdict = "" if row["met"] is None else "met" if row["met"] else "MISSED"
        label = f"{m.label} ({m.unit})".replace("`", "")
        lines.append(f"{label:<68} {pm:>12} {gm:>12} {ratio:>8} {m.target_text or '':>10}  {verdict}")
    return "\n".join(lines)


INTRO = (
    "`tools/bench/fs.py` runs a local grid (coordinator + 5 storage peers, 3-of-5) with a pluto mount, and a "
    "gocryptfs mount whose cipherdir is on the same disk, and measures both the same way, interleaved. How each "
    "figure is taken, and what it leaves out, is in [tools/bench/README.md](../tools/bench/README.md). The block "
    "below is rewritten by every full run; text after it is not."
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/bench/fs.py", description="pluto against gocryptfs, side by side.")
    ap.add_argument("--repeat", type=int, default=None, help="runs per file system (default 3; --quick: 1)")
    ap.add_argument("--size", default=None, help="size of the copied file (default 1G; --quick: 128M)")
    ap.add_argument("--edit-file", default=None, help="size of the file edited in the middle (default 256M; "
                    "--quick: 64M)")
    ap.add_argument("--tree", type=Path, default=None, help=f"tree to rsync (default {STDLIB}; --quick: "
                    f"{QUICK_TREE.name})")
    ap.add_argument("--quick", action="store_true", help="smoke test: small sizes, 1 repeat, report not in docs/")
    ap.add_argument("--output", type=Path, default=None,
                    help="where BENCHMARKS.md and bench-ratios.png go (default docs/; --quick or --profile: a "
                    "temporary directory)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the run's working directory (grid, "
                    "cipherdir, source files); default the system temporary directory")
    ap.add_argument("--timeout", type=float, default=30.0, help="the pluto mount's --timeout (default 30, its own "
                    "default)")
    ap.add_argument("--profile", type=Path, default=None, help="record py-spy (raw stacks) of the pluto mount and "
                    "peer 0 during each pluto phase of the first repeat into this directory")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S", help="before each round, wait up to S "
                    "seconds for other processes to stop using the CPU (default 0: do not wait)")
    ap.add_argument("--report-from", type=Path, default=None, metavar="JSON", help="measure nothing: rewrite the "
                    "report (table, BENCHMARKS.md section, PNG) from the --json file of an earlier run")
    ap.add_argument("--audits", action="store_true", help="keep the mount's background audit at its default "
                    "interval (by default it is pushed out of the run, so it cannot land in one phase)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--no-verify", action="store_true", help="skip the content checks after the read and the edit")
    ap.add_argument("--keep", action="store_true", help="keep the working directory (stopped, unmounted)")
    a = ap.parse_args(argv)

    s = Settings(quick=a.quick, keep=a.keep, verify=not a.no_verify, profile=a.profile, op_timeout=a.timeout,
                 workdir=a.workdir, wait_quiet=a.wait_quiet, audits=a.audits)
    if a.quick:
        s.repeat, s.size, s.edit_file, s.tree = 1, 128 * MIB, 64 * MIB, QUICK_TREE
    if a.repeat is not None:
        s.repeat = a.repeat
    if a.size is not None:
        s.size = parse_size(a.size)
    if a.edit_file is not None:
        s.edit_file = parse_size(a.edit_file)
    if a.tree is not None:
        s.tree = a.tree.resolve()
    if s.repeat < 1 or s.size < MIB:
        ap.error("--repeat must be at least 1 and --size at least 1M")
    output = a.output
    if output is None:
        output = _ROOT / "docs" if not (a.quick or a.profile) else Path(tempfile.mkdtemp(prefix="pluto-fs-report-"))
    output.mkdir(parents=True, exist_ok=True)

    if a.report_from is not None:
        results = json.loads(a.report_from.read_text())
        write_report(results, output, a.no_plot, a.json)
        return 0

    problems = preflight(s, need_plot=not a.no_plot)
    if problems:
        for p in problems:
            print(f"fs.py: {p}", file=sys.stderr)
        return 2
    files, tree_bytes = tree_size(s.tree)
    workparent = s.workdir or Path(tempfile.gettempdir())
    workparent.mkdir(parents=True, exist_ok=True)
    problems = disk_check(s, tree_bytes, workparent)
    if problems:
        for p in problems:
            print(f"fs.py: {p}", file=sys.stderr)
        return 2
    load1 = os.getloadavg()[0]
    warnings = []
    if load1 > 0.5:
        warnings.append(f"load average was {load1:.2f} at the start: other work may have disturbed the numbers")
        log(f"WARNING: {warnings[-1]}")

    # SIGTERM ends the run as cleanly as Ctrl-C (the finally blocks unmount and stop everything).
    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="pluto-fs-bench-", dir=workparent))
    bench = Bench(s, root, warnings=warnings, capacity=peer_capacity(s, tree_bytes))
    started = datetime.datetime.now()
    code_at_start, digest_at_start = code_version(), code_digest()
    failed = True
    error: str | None = None

    def results_so_far() -> dict:
        done = min(len(bench.runs["pluto"]), len(bench.runs["gocryptfs"]))  # complete repeats only
        res = {
            "date": started.strftime("%Y-%m-%d"),
            "started": started.isoformat(timespec="seconds"),
            "command": ("python tools/bench/fs.py " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip(),
            "quick": s.quick,
            "machine": machine(),
            "code": f"{code_at_start}, source digest {digest_at_start}",
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
                         "tree_files": files, "tree_bytes": tree_bytes, "peer_capacity": bench.capacity,
                         "repeats_done": done},
            "runs": {fs: runs[:done] for fs, runs in bench.runs.items()},
            "warnings": bench.warnings,
        }
        if error:
            res["error"] = error
        return res

    try:
        log(f"generating {s.repeat} × ({s.size / MIB:g} + {s.edit_file / MIB:g} + {s.edit_size / MIB:g}) MiB "
            f"of random source files in {root}/src")
        bench.generate()
        bench.start()
        for r in range(s.repeat):
            for fs in ("pluto", "gocryptfs"):
                log(f"--- {fs}, repeat {r + 1} of {s.repeat}")
                bench.runs[fs].append(bench.round(fs, r))
                if a.json:
                    a.json.write_text(json.dumps(results_so_far(), indent=1, default=str))
        failed = False
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log(f"the run failed: {error}")
        import traceback

        traceback.print_exc()
    finally:
        try:
            bench.close()
        finally:
            if failed:
                log(f"logs of the failed run copied to {bench.save_logs()}")
            if s.keep:
                log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)

    if failed:
        done = min(len(bench.runs["pluto"]), len(bench.runs["gocryptfs"]))
        if done == 0:
            return 1
        bench.warn(f"the run stopped in repeat {done + 1} of {s.repeat} ({error}); the tables show the "
                   f"{done} complete repeat(s)")
        if a.output is None and output == _ROOT / "docs":
            output = Path(tempfile.mkdtemp(prefix="pluto-fs-report-"))  # keep docs/ for complete runs
    if code_digest() != digest_at_start:
        bench.warn(f"pluto's code changed on disk during the run (at the start: {code_at_start}, source digest "
                   f"{digest_at_start}; at the end: {code_version()}, {code_digest()}): mounts started after the "
                   "change ran the new code")
    results = results_so_far()
    write_report(results, output, a.no_plot, a.json)
    return 1 if failed else 0


def write_report(results: dict, output: Path, no_plot: bool, json_path: Path | None) -> None:
    """Table on stdout, the raw JSON if asked, the BENCHMARKS.md section and the PNG."""
    print(format_table(results))
    if json_path:
        json_path.write_text(json.dumps(results, indent=1, default=str))
    png = None if no_plot else output / "bench-ratios.png"
    if png is not None:
        plot(results, png)
    generated = markdown(results, png.name if png else None)
    update_benchmarks_md(output / "BENCHMARKS.md", generated, INTRO)
    log(f"wrote {output / 'BENCHMARKS.md'}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    sys.exit(main())
