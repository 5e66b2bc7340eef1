"""One checker run: start the cluster, run the workload under the nemesis, heal, check, report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

from . import report
from .checks import final_checks
from .client import Client
from .fixture import Cluster
from .history import Finding, History
from .nemesis import Fault, Nemesis
from .nemesis import plan as plan_faults
from .oracle import DIR, Oracle
from .settings import Settings
from .workload import SETUP_FILE, SHARED, Namespace, Op, join, segment
from .workload import plan as plan_ops

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
SUPERVISE_EVERY = 0.25  # seconds between checks that every mount process is still alive
PLAN_SHOWN = 2000  # operations per mount written to plan.json (the history has every one that ran)


@dataclass
class Result:
    """What a run found, where its files are, and the exit code it maps to."""

    exit_code: int
    summary: dict
    findings: list[Finding]
    directory: Path
    text: str
    kept: bool = field(default=True)


class Worker(threading.Thread):
    """Runs one mount's planned operations in order, waiting while its mount is down."""

    def __init__(self, cluster: Cluster, client: Client, ops: Iterable[Op], stop: threading.Event, pace: float) -> None:
        super().__init__(name=f"worker-m{client.mount}", daemon=True)
        self.cluster = cluster
        self.client = client
        self.ops = ops
        self.stop = stop
        self.pace = pace
        self.current: tuple[Op, float] | None = None  # the operation running now and since when
        self.done = 0
        self.error: BaseException | None = None
        self._generation = -1

    def run(self) -> None:
        """Run the operations until they are done or the run stops."""
        try:
            for op in self.ops:
                if not self._attached():
                    return
                self.current = (op, time.monotonic())
                self.client.run(op)
                self.current = None
                self.done += 1
                self.stop.wait(self.pace)
        except BaseException as exc:  # a bug in the checker: the runner reports it
            self.error = exc

    def _attached(self) -> bool:
        """Hold a root descriptor of the mount process running now; False if the run stopped first."""
        m = self.cluster.mounts[self.client.mount]
        while not self.stop.is_set():
            if m.up.is_set() and m.generation == self._generation and self.client.root_fd is not None:
                return True
            got = self.cluster.open_root(self.client.mount)
            if got is None:
                self.client.attach(None)
                m.up.wait(0.2)
                continue
            self._generation, fd = got
            self.client.attach(fd)
        return False


def setup(cluster: Cluster, oracle: Oracle, history: History) -> None:
    """Through mount 0, before any fault: the shared folders, each with one fsync'd file."""
    root = cluster.mounts[0].vol.path
    for folder in SHARED:
        os.mkdir(root / folder)
        path = join(folder, SETUP_FILE)
        op_id = f"setup.{folder}"
        with open(root / path, "wb") as f:
            f.write(segment(op_id, 100))
            f.flush()
            os.fsync(f.fileno())  # publishes the file, the folder and the root
        oracle.track([folder], None, DIR)
        oracle.track([path], None, (op_id,))
        oracle.ack(op_id, folder, DIR)
        oracle.ack(op_id, path, (op_id,))
    history.record("phase", name="setup-done")


def supervise(cluster: Cluster, workers: list[Worker], nemesis: Nemesis, deadline: float, history: History) -> None:
    """Until the deadline or the end of the workload: a mount that dies by itself is a finding, and is
    mounted again so the run goes on (its journal resumes)."""
    while time.monotonic() < deadline and any(w.is_alive() for w in workers):
        for m in cluster.mounts:
            code = cluster.died(m.index)
            if code is None:
                continue
            tail = cluster.log_tail(m.vol)
            last_words = [line for line in tail.splitlines() if line.startswith("pluto: ")][-1:]
            history.find(Finding("mount-died", None, f"mount {m.index} keeps running (it retries what fails)",
                                 f"it exited with code {code}" + (f" ({last_words[0]})" if last_words else ""), tail))
            cluster.mark_dead(m.index)
            try:
                cluster.remount(m.index)
                history.record("fault", action="remount-after-death", target=m.index, down=sorted(nemesis.down),
                               lost=sorted(nemesis.lost), mounts_down=sorted(nemesis.mounts_down))
            except RuntimeError as exc:
                history.record("note", text=f"mount {m.index} did not come back after dying: {exc}")
        for w in workers:
            if w.error is not None:
                raise RuntimeError(f"{w.name} crashed") from w.error
        if nemesis.error is not None:
            raise RuntimeError("the nemesis crashed") from nemesis.error
        time.sleep(SUPERVISE_EVERY)


def stop_workers(cluster: Cluster, workers: list[Worker], stop: threading.Event, history: History,
                 hang: float) -> None:
    """Let each worker finish its current operation (the faults are over by now); one that hangs is a
    finding, and its mount is killed so the system call returns."""
    stop.set()
    for w in workers:
        w.join(hang)
        if w.is_alive() and w.current is not None:
            op, since = w.current
            history.find(Finding("hang", op.path, f"{op.kind} returns (ok or an error) within the mount's timeouts",
                                 f"still running after {time.monotonic() - since:.0f} s", op.describe()))
            cluster.kill_mount(w.client.mount)
            w.join(30)


def write_plan(directory: Path, settings: Settings, faults: list[Fault]) -> None:
    """plan.json: the settings, the first operations of each mount and every planned fault."""
    shown = {m: [asdict(o) for o in islice(plan_ops(settings.seed, m, settings.ops), PLAN_SHOWN)]
             for m in range(settings.mounts)}
    (directory / "plan.json").write_text(json.dumps(
        {"settings": {k: str(v) for k, v in asdict(settings).items()}, "first_ops": shown,
         "faults": [asdict(f) for f in faults]}, indent=1))


def exercise(cluster: Cluster, settings: Settings, nemesis: Nemesis, oracle: Oracle, history: History,
             stop: threading.Event) -> None:
    """The workload under the nemesis, until the ops or the minutes run out; then every fault ended,
    every operation finished and every mount running again."""
    clients = [Client(m, oracle, history) for m in range(settings.mounts)]
    for c in clients:
        oracle.track_namespace(Namespace(c.mount))
    workers = [Worker(cluster, c, plan_ops(settings.seed, c.mount, settings.ops), stop, settings.pace)
               for c in clients]
    history.record("phase", name="workload", ops=settings.ops * settings.mounts, faults=len(nemesis.faults))
    for w in workers:
        w.start()
    nemesis.start()
    supervise(cluster, workers, nemesis, time.monotonic() + settings.minutes * 60, history)
    history.record("phase", name="stop")
    stop.set()  # no new operation starts...
    nemesis.stop_event.set()  # ...and every fault ends, so the ones still running can finish
    nemesis.join(300)
    stop_workers(cluster, workers, stop, history, settings.op_hang)
    cluster.heal()
    for m in cluster.mounts:  # a mount left down (it died, or would not start) finishes its journal too
        if not m.up.is_set():
            try:
                cluster.remount(m.index)
            except RuntimeError as exc:
                history.record("note", text=f"mount {m.index} could not be started for the final unmount: {exc}")


def run(settings: Settings) -> Result:
    """Run the checker with `settings` and return its result (the report is written next to the history)."""
    directory = settings.keep or Path(tempfile.mkdtemp(prefix="pluto-checker-"))
    directory.mkdir(parents=True, exist_ok=True)
    history = History(directory / "history.jsonl")
    oracle = Oracle(history)
    faults = plan_faults(settings.seed, settings.peers, settings.mounts, settings.minutes * 60,
                         settings.fault_budget, settings.aggressive)
    write_plan(directory, settings, faults)
    cluster = Cluster(directory, settings)
    stop = threading.Event()
    nemesis = Nemesis(cluster, faults, history, oracle, settings.fault_budget, settings.aggressive,
                      settings.repair_timeout)
    stats: dict = {}
    error = ""
    try:
        history.record("phase", name="start", seed=settings.seed, mounts=settings.mounts, peers=settings.peers)
        cluster.start()
        setup(cluster, oracle, history)
        cluster.start_devices()
        exercise(cluster, settings, nemesis, oracle, history, stop)
        stats = final_checks(cluster, oracle, history, settings, set(nemesis.lost))
    except Exception:
        error = traceback.format_exc()
        history.record("error", text=error)
    finally:
        stop.set()
        nemesis.stop_event.set()
        if nemesis.is_alive():  # let it end its faults first, or it could restart a peer after the teardown
            nemesis.join(120)
        cluster.close()
    summary = report.summarize(history, {
        "seed": settings.seed, "mounts": settings.mounts, "peers": settings.peers, "aggressive": settings.aggressive,
        "planned_ops": settings.ops * settings.mounts, "planned_faults": len(faults),
        "seconds": history.now(), "probe_rounds": settings.probe_rounds, "directory": str(directory),
        "repairs": nemesis.repairs, "skipped_faults": nemesis.skipped,
        "error": error.strip().splitlines()[-1] if error else "", **stats})
    text = report.write(directory, summary, history)
    history.close()
    violations = [f for f in history.findings if f.violation]
    code = EXIT_ERROR if error else EXIT_VIOLATIONS if violations else EXIT_OK
    kept = settings.keep is not None or code != EXIT_OK
    if not kept:
        shutil.rmtree(directory, ignore_errors=True)
    return Result(code, summary, list(history.findings), directory, text, kept)
