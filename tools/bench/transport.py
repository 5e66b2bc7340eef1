"""Transport benchmark: one real storage peer process, this process as client, loopback.

Run:    python tools/bench/transport.py [--repeat 5] [--json]
Import: from tools.bench.transport import run_benchmark, format_table

What it measures, between this process and one `pluto serve` process started
for the run (store in a temporary directory, removed at the end):

1. bulk fragment throughput over one connection: N fragments of 8 MiB of
   random data (generated, and their ids computed, before the clock starts)
   uploaded with several in flight at once, then downloaded back with
   `get_fragment(verify=False)`; each download is checked against its id
   after the clock stops. Upload time includes everything the peer does
   before it answers (Merkle check, write, fsync, index commit).
2. small-request round trips: `ping` from many concurrent callers over one
   connection for a few seconds, and from a single sequential caller.

Every measurement is repeated (default 5) and reported as median and
min-max, next to the targets of docs/BENCHMARKS.md. MB means 10**6 bytes.
The peer process's peak RSS (VmHWM) is read just before it is stopped; the
peer is always stopped, even on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and this
# file (transport.py) would shadow the `transport` package: put the repository
# root there instead.
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import trio  # noqa: E402
from nacl.public import PrivateKey  # noqa: E402

from cryptree.merkle import merkle_root  # noqa: E402
from pluto_fs.grid.localgrid import GridProcess  # noqa: E402
from transport.peer.client import StoragePeerClient  # noqa: E402
from transport.protocol.pool import open_pool  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024
TARGET_BULK_MBPS = 250.0
TARGET_RPS = 3000.0
BUSY_CORES = 0.15  # other processes using more than this during a timed region make the numbers suspect


@dataclass
class Settings:
    """Knobs of one benchmark run (defaults match the brief)."""

    repeat: int = 5
    fragments: int = 32  # per bulk round
    fragment_size: int = 8 * MIB
    bulk_concurrency: int = 4
    ping_concurrency: int = 32
    ping_seconds: float = 3.0
    capacity: str = "20G"
    wait_quiet: float = 0.0  # before each round, wait up to this many seconds for other processes to go quiet
    retry_busy: int = 0  # redo up to this many rounds (in all) that other processes disturbed


@dataclass
class Series:
    """One metric measured `repeat` times."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: float | None = None
    peer_cpu: list[float] = field(default_factory=list)  # peer CPU seconds / wall seconds, per round
    client_cpu: list[float] = field(default_factory=list)  # same for this process
    peer_faults: list[int] = field(default_factory=list)  # minor page faults in the peer, per round
    client_faults: list[int] = field(default_factory=list)  # same for this process
    others_cpu: list[float] = field(default_factory=list)  # cores used by other processes meanwhile (noise)

    def add(self, value: float, m: _Meter) -> None:
        self.values.append(value)
        self.peer_cpu.append(m.peer_cpu)
        self.client_cpu.append(m.client_cpu)
        self.peer_faults.append(m.peer_faults)
        self.client_faults.append(m.client_faults)
        self.others_cpu.append(m.others_cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.median >= self.target

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(median=self.median, min=self.low, max=self.high, meets_target=self.meets_target)
        d["peer_cpu_median"] = statistics.median(self.peer_cpu) if self.peer_cpu else None
        d["client_cpu_median"] = statistics.median(self.client_cpu) if self.client_cpu else None
        return d


# ---- the peer process ---------------------------------------------------------


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _proc_times(pid: int) -> tuple[float, int]:
    """(utime + stime in seconds, minor page faults) of a process, all threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks(), int(fields[7])


def _machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    steal_guest = sum(ticks[7:]) if len(ticks) > 7 else 0  # steal, guest, guest_nice: not ours to count
    return (sum(ticks) - idle - steal_guest) / _clock_ticks()


def _proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peer_process(root: Path, capacity: str) -> GridProcess:
    """A stand-alone storage peer (no --coordinator), not yet started."""
    argv = [
        sys.executable, "-m", "pluto_fs.cli.main", "--log-level", "warning", "serve",
        "--store", str(root / "peer"), "--capacity", capacity, "--listen", "127.0.0.1:0",
    ]
    return GridProcess("bench-peer", argv, root / "peer.log")


# ---- measurements -------------------------------------------------------------


def disk_ceiling(directory: Path, files: int = 32, size: int = 8 * MIB, writers: int = 4) -> float:
    """MB/s of durable fragment-like writes on `directory`'s disk, with no network or hashing.

    Each file is written in 1 MiB blocks, fsync'd, renamed and its directory
    fsync'd (what the peer does per fragment), `writers` at a time: the most
    the upload benchmark could reach on this disk.
    """
    import threading

    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MIB)
    todo = iter(range(files))
    lock = threading.Lock()

    def writer() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            tmp, final = directory / f"t{i}", directory / f"f{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for _ in range(size // MIB):
                    os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    shutil.rmtree(directory, ignore_errors=True)
    return files * size / MB / wall


class _Meter:
    """Wall time and CPU time of both processes over one timed region."""

    def __init__(self, peer_pid: int) -> None:
        self.peer_pid = peer_pid

    def __enter__(self) -> _Meter:
        self.p0, self.pf0 = _proc_times(self.peer_pid)
        self.c0, self.cf0 = _proc_times(os.getpid())
        self.m0 = _machine_busy_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        p1, pf1 = _proc_times(self.peer_pid)
        c1, cf1 = _proc_times(os.getpid())
        other = _machine_busy_seconds() - self.m0 - (p1 - self.p0) - (c1 - self.c0)
        self.others_cpu = max(0.0, other) / self.wall  # CPU used by every other process meanwhile, in cores
        self.peer_cpu = (p1 - self.p0) / self.wall
        self.client_cpu = (c1 - self.c0) / self.wall
        self.peer_faults = pf1 - self.pf0
        self.client_faults = cf1 - self.cf0


async def _bulk_round(client: StoragePeerClient, s: Settings, peer_pid: int) -> tuple[_Meter, _Meter]:
    data = [os.urandom(s.fragment_size) for _ in range(s.fragments)]
    ids = [merkle_root(d) for d in data]
    got: list[bytes | None] = [None] * s.fragments

    async def workers(job) -> None:
        todo = iter(range(s.fragments))

        async def worker() -> None:
            for i in todo:  # a shared iterator: each index goes to exactly one worker
                await job(i)

        async with trio.open_nursery() as nursery:
            for _ in range(s.bulk_concurrency):
                nursery.start_soon(worker)

    async def put(i: int) -> None:
        await client.put_fragment(ids[i], data[i])

    async def get(i: int) -> None:
        got[i] = await client.get_fragment(ids[i], verify=False)

    with _Meter(peer_pid) as up:
        await workers(put)
    with _Meter(peer_pid) as down:
        await workers(get)
    for i in range(s.fragments):  # verification is outside the timed region
        if got[i] is None or len(got[i]) != s.fragment_size or merkle_root(got[i]) != ids[i]:
            raise RuntimeError(f"fragment {i} came back wrong")
    for frag_id in ids:  # keep the store's size bounded across repeats
        await client.delete_fragment(frag_id)
    return up, down


async def _ping_round(client: StoragePeerClient, callers: int, seconds: float, peer_pid: int) -> tuple[float, _Meter]:
    count = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await client.ping()
            count += 1

    with _Meter(peer_pid) as m:
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
    return count / m.wall, m


async def _wait_quiet(peer_pid: int, limit: float, log=None) -> float:
    """Wait (up to `limit` s) until other processes use under BUSY_CORES; return the load last seen."""
    deadline = time.monotonic() + limit
    while True:
        with _Meter(peer_pid) as m:
            await trio.sleep(1.0)
        if m.others_cpu <= BUSY_CORES or time.monotonic() >= deadline:
            return m.others_cpu
        if log:
            log(f"machine busy (other processes use {m.others_cpu:.2f} cores); waiting...")


async def _run(s: Settings, peer: GridProcess, log=None) -> tuple[dict[str, Series], int]:
    bulk_mb = s.fragments * s.fragment_size / MB
    series = {
        "upload": Series(f"bulk upload, {s.fragments} x {s.fragment_size // MIB} MiB, {s.bulk_concurrency} in flight",
                         "MB/s", target=TARGET_BULK_MBPS),
        "download": Series(f"bulk download, {s.fragments} x {s.fragment_size // MIB} MiB, "
                           f"{s.bulk_concurrency} in flight", "MB/s", target=TARGET_BULK_MBPS),
        "ping_concurrent": Series(f"ping, {s.ping_concurrency} concurrent callers, 1 connection", "req/s",
                                  target=TARGET_RPS),
        "ping_sequential": Series("ping, 1 sequential caller", "req/s"),
    }
    key = bytes(PrivateKey.generate())
    async with open_pool(key) as pool:
        conn = await pool.get(peer.address)
        client = StoragePeerClient(conn)
        # Warm-up (untimed): connection, code paths, the peer's first fsyncs.
        for _ in range(200):
            await client.ping()
        warm = os.urandom(s.fragment_size)
        warm_id = merkle_root(warm)
        await client.put_fragment(warm_id, warm)
        await client.get_fragment(warm_id)
        await client.delete_fragment(warm_id)
        r = discarded = 0
        while r < s.repeat:
            if s.wait_quiet > 0:
                await _wait_quiet(peer.proc.pid, s.wait_quiet, log)
                # A long wait may outlast the peer's idle timeout: the pool redials a closed connection.
                client = StoragePeerClient(await pool.get(peer.address))
                await client.ping()
            up, down = await _bulk_round(client, s, peer.proc.pid)
            got = {"upload": (bulk_mb / up.wall, up), "download": (bulk_mb / down.wall, down)}
            for name, callers in (("ping_concurrent", s.ping_concurrency), ("ping_sequential", 1)):
                got[name] = await _ping_round(client, callers, s.ping_seconds, peer.proc.pid)
            summary = ", ".join(f"{k} {v:,.0f} {series[k].unit}" for k, (v, _) in got.items())
            busiest = max(m.others_cpu for _, m in got.values())
            if busiest > BUSY_CORES and discarded < s.retry_busy:
                discarded += 1
                if log:
                    log(f"round discarded, other processes used {busiest:.2f} cores: {summary}")
                continue
            for name, (value, m) in got.items():
                series[name].add(value, m)
            r += 1
            if log:
                log(f"round {r}/{s.repeat}: {summary}")
    return series, discarded


def run_benchmark(settings: Settings | None = None, log=None) -> dict:
    """Start a peer, measure, stop it; return the results as a JSON-ready dict."""
    s = settings or Settings()
    if s.repeat < 1:
        raise ValueError("repeat must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="pluto-bench-transport-"))
    load_start = os.getloadavg()
    peer: GridProcess | None = None
    try:
        need = 2 * s.fragments * s.fragment_size
        if shutil.disk_usage(root).free < need + (1 << 30):
            raise RuntimeError(f"not enough free disk under {root} for {need / MB:,.0f} MB of fragments")
        # The disk's own ceiling, measured where the peer will store, median of 3.
        ceiling = statistics.median(disk_ceiling(root / "disk-ceiling") for _ in range(3))
        peer = _peer_process(root, s.capacity)
        peer.start()
        series, discarded = trio.run(_run, s, peer, log)
        peer_hwm = _proc_status_kib(peer.proc.pid, "VmHWM")
        peer_rss = _proc_status_kib(peer.proc.pid, "VmRSS")
    finally:
        if peer is not None:
            peer.stop()
        shutil.rmtree(root, ignore_errors=True)
    client_hwm = _proc_status_kib(os.getpid(), "VmHWM")
    others = [x for v in series.values() for x in v.others_cpu]
    return {
        "benchmark": "transport",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "code": _code_version(),
        "settings": asdict(s),
        "rounds_discarded_busy": discarded,
        "others_cpu_max": max(others),
        "others_cpu_median": statistics.median(others),
        "disk_ceiling_mbps": ceiling,
        "loadavg_start": [round(x, 2) for x in load_start],  # 1, 5, 15 min, as `uptime` shows them
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "results": {k: v.as_dict() for k, v in series.items()},
        "peer_peak_rss_kib": peer_hwm,
        "peer_rss_at_end_kib": peer_rss,
        "client_peak_rss_kib": client_hwm,
    }


def _code_version() -> dict:
    """Which transport code was measured: git commit if any, and a digest of transport/*.py."""
    digest = hashlib.sha256()
    for path in sorted((_ROOT / "transport").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    commit = None
    try:  # read-only: which commit is checked out, if any
        out = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": commit, "transport_sha256": digest.hexdigest()[:12]}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- output -------------------------------------------------------------------


def format_table(res: dict) -> str:
    """The results as a Markdown table (readable in a terminal too)."""
    m = res["machine"]
    s = res["settings"]
    lines = [
        f"Transport benchmark, {res['date']}; {m['cpus']} cores ({m['cpu']}), Python {m['python']}; "
        f"loopback, 1 connection, median of {s['repeat']} runs (MB = 10^6 bytes)",
        "",
        "| measurement | median | min–max | target | met | peer CPU | client CPU |",
        "|---|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in res["results"].values():
        target = f"≥ {r['target']:,.0f} {r['unit']}" if r["target"] else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r["meets_target"]]
        lines.append(
            f"| {r['name']} | {r['median']:,.0f} {r['unit']} | {r['min']:,.0f}–{r['max']:,.0f} | {target} | {met} "
            f"| {r['peer_cpu_median']:.0%} | {r['client_cpu_median']:.0%} |"
        )
    lines.append("")
    lines.append(
        f"Peer process peak RSS (VmHWM): {_mib(res['peer_peak_rss_kib'])}; "
        f"client process peak RSS: {_mib(res['client_peak_rss_kib'])} (holds the test data)."
    )
    lines.append("CPU columns: process CPU time / wall time during the timed region (100% = one core busy).")
    code = res["code"]
    lines.append(f"Code: transport/*.py sha256 {code['transport_sha256']}"
                 + (f", git {code['git_commit']}" if code["git_commit"] else ", not committed") + ".")
    lines.append(f"Other processes used {res['others_cpu_median']:.2f} cores (median; max {res['others_cpu_max']:.2f}) "
                 "of the machine during the timed regions"
                 + (f"; {res['rounds_discarded_busy']} disturbed round(s) were discarded and redone."
                    if res["rounds_discarded_busy"] else "."))
    if "disk_ceiling_mbps" in res:
        lines.append(f"Disk ceiling (32 x 8 MiB written, fsync'd, renamed, dir fsync'd, 4 at a time, no network): "
                     f"{res['disk_ceiling_mbps']:,.0f} MB/s.")
    if "loadavg_start" in res:
        lines.append("Load average (1/5/15 min) at start: {} ; at end: {}.".format(
            " / ".join(f"{x:.2f}" for x in res["loadavg_start"]), " / ".join(f"{x:.2f}" for x in res["loadavg_end"])))
    if res["others_cpu_max"] > BUSY_CORES:
        lines.append("WARNING: the machine was busy with other work during the run; "
                     "these numbers understate an idle machine. Run again when it is quiet.")
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return "unknown" if kib is None else f"{kib / 1024:,.0f} MiB"


def _first_leaf(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type `kind` in `exc`, looking inside exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _first_leaf(sub, kind)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, kind) else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="rounds of each measurement (default 5, at least 3 advised)")
    p.add_argument("--json", action="store_true", help="print machine-readable results only")
    p.add_argument("--fragments", type=int, default=Settings.fragments, help="8 MiB fragments per bulk round")
    p.add_argument("--concurrency", type=int, default=Settings.bulk_concurrency, help="bulk transfers in flight")
    p.add_argument("--callers", type=int, default=Settings.ping_concurrency, help="concurrent ping callers")
    p.add_argument("--seconds", type=float, default=Settings.ping_seconds, help="duration of each ping round")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each round, wait up to SECONDS for other processes to stop using CPU (shared machines)")
    p.add_argument("--retry-busy", type=int, default=0, metavar="N",
                   help=f"discard and redo up to N rounds during which other processes used over {BUSY_CORES} cores")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.fragments < 1 or args.concurrency < 1 or args.callers < 1 or args.seconds <= 0:
        p.error("counts must be at least 1 and --seconds more than 0")
    if args.wait_quiet < 0 or args.retry_busy < 0:
        p.error("--wait-quiet and --retry-busy must not be negative")
    s = Settings(repeat=args.repeat, fragments=args.fragments, bulk_concurrency=args.concurrency,
                 ping_concurrency=args.callers, ping_seconds=args.seconds, wait_quiet=args.wait_quiet,
                 retry_busy=args.retry_busy)
    log = None if args.json else (lambda text: print(text, file=sys.stderr, flush=True))

    def on_sigterm(signum, frame):  # unwind like Ctrl-C, so the peer is stopped and temp dirs removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        res = run_benchmark(s, log)
    except BaseException as exc:  # trio may wrap the cause in exception groups
        if _first_leaf(exc, KeyboardInterrupt) is not None:
            print("interrupted; peer stopped", file=sys.stderr)
            return 130
        cause = _first_leaf(exc, Exception)
        if cause is None:
            raise
        print(f"transport benchmark failed: {type(cause).__name__}: {cause}", file=sys.stderr)  # one line
        return 1
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
