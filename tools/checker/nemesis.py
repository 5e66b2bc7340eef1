"""The nemesis: a seeded schedule of faults, and a thread that carries it out within the fault budget.

Faults (each is an episode with a start and, for most, an end):
  kill-peer    kill -9 a storage peer; restart it on its port `duration` s later
  freeze-peer  SIGSTOP a peer (it accepts connections and never answers); SIGCONT later
  wipe-peer    kill -9 a peer, delete its store but its key, start it again empty: its data is
               lost, and it counts as lost until a repair succeeds
  kill-mount   kill -9 a mount; mount the same home again later (the journal resumes)
  lose-mount   kill -9 a mount and delete its cache and journal (the machine is gone); mount the
               same home again later, which now knows only what the network holds

The budget is the promise under test: at most n-k peers down (killed or
frozen) or lost (wiped, not yet repaired) at any one time. A wiped peer
stops counting once `pluto check --repair --now` exited 0; that repair runs
while a mount is down for a kill-mount/lose-mount (no mount holds its home
then). With `aggressive`, kills and freezes may exceed the budget and last longer
(so three or more peers are often down at once; the checker then expects
errors, not silent loss); wipes never do.

The schedule comes from the seed alone (`plan`). At run time a planned fault
that would break the budget, or whose target is not in the state the plan
expected (a restart ran late, a repair failed), is skipped and the skip is
recorded, so the history always says what was really done.
"""

from __future__ import annotations

import heapq
import json
import random
import threading
import time
from dataclasses import dataclass

from .fixture import Cluster
from .history import Finding, History
from .oracle import Oracle

WEIGHTS = {"kill-peer": 24, "freeze-peer": 26, "wipe-peer": 8, "kill-mount": 26, "lose-mount": 16}
DURATIONS = {"kill-peer": (3.0, 10.0), "freeze-peer": (2.0, 8.0), "wipe-peer": (0.0, 0.0),
             "kill-mount": (0.5, 2.0), "lose-mount": (0.5, 2.0)}
GAP = (2.0, 5.0)  # seconds between the starts of two faults
PEER_FAULTS = ("kill-peer", "freeze-peer", "wipe-peer")
MOUNT_FAULTS = ("kill-mount", "lose-mount")
REMOUNT_TRIES = 5
AGGRESSIVE_STRETCH = 2.5  # --aggressive: kills and freezes last this much longer, so 3 or more overlap


@dataclass(frozen=True)
class Fault:
    """One planned fault: what, on which peer or mount, when (s after the workload starts), for how long."""

    at: float
    kind: str
    target: int
    duration: float

    def describe(self) -> str:
        """E.g. 'freeze-peer 3 for 4.2 s at +12.0 s'."""
        span = f" for {self.duration:g} s" if self.duration else ""
        return f"{self.kind} {self.target}{span} at +{self.at:g} s"


def plan(seed: int, peers: int, mounts: int, seconds: float, budget: int, aggressive: bool) -> list[Fault]:
    """The faults of a run of `seconds`, from `seed` alone, within the budget (see the module doc)."""
    rng = random.Random(f"pluto-checker/{seed}/faults")
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    down_until: dict[int, float] = {}
    lost: set[int] = set()
    mount_back: dict[int, float] = {}
    faults: list[Fault] = []
    t = rng.uniform(*GAP)
    while t < seconds:
        kind = rng.choices(kinds, weights)[0]
        down = {p for p, end in down_until.items() if end > t}
        free = [p for p in range(peers) if p not in down and p not in lost]
        within = len(down | lost) + 1 <= budget
        allowed = within if kind == "wipe-peer" or not aggressive else True
        if kind in PEER_FAULTS and not (free and allowed):
            kind = rng.choice(MOUNT_FAULTS)
        lo, hi = DURATIONS[kind]
        stretch = AGGRESSIVE_STRETCH if aggressive and kind in ("kill-peer", "freeze-peer") else 1.0
        duration = round(rng.uniform(lo, hi) * stretch, 2)
        if kind in PEER_FAULTS:
            target = rng.choice(free)
            if kind == "wipe-peer":
                lost.add(target)
            else:
                down_until[target] = t + duration
        else:
            idle = [m for m in range(mounts) if mount_back.get(m, 0) < t]
            if not idle:
                t += rng.uniform(*GAP)
                continue
            target = rng.choice(idle)
            mount_back[target] = t + duration + 5  # the repair and the remount take a while
            lost.clear()  # the plan assumes the repair in this window succeeds; run time checks
        faults.append(Fault(round(t, 2), kind, target, duration))
        t += rng.uniform(*GAP)
    return faults


class Nemesis(threading.Thread):
    """Carries out a plan against a Cluster, recording every action in the history."""

    def __init__(self, cluster: Cluster, faults: list[Fault], history: History, oracle: Oracle,
                 budget: int, aggressive: bool, repair_timeout: float) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.cluster = cluster
        self.faults = faults
        self.history = history
        self.oracle = oracle
        self.budget = budget
        self.aggressive = aggressive
        self.repair_timeout = repair_timeout
        self.stop_event = threading.Event()
        self.down: dict[int, str] = {}  # peer -> "killed" / "frozen"
        self.lost: set[int] = set()
        self.mounts_down: set[int] = set()
        self.skipped = 0
        self.repairs: list[dict] = []
        self.error: BaseException | None = None
        self._ends: list[tuple[float, int, str, int]] = []  # (when, tiebreak, end action, target)
        self._tiebreak = 0
        self._t0 = 0.0

    # ---- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Wait for each planned start or end, carry it out; on stop, end every open episode now."""
        self._t0 = self.history.now()
        try:
            starts = list(self.faults)
            while not self.stop_event.is_set():
                next_start = self._t0 + starts[0].at if starts else float("inf")
                next_end = self._ends[0][0] if self._ends else float("inf")
                when = min(next_start, next_end)
                if when == float("inf"):
                    break
                if self.stop_event.wait(max(0.0, when - self.history.now())):
                    break
                if next_end <= next_start:
                    _, _, action, target = heapq.heappop(self._ends)
                    self._end(action, target)
                else:
                    self._start(starts.pop(0))
        except BaseException as exc:  # the runner reports it; the teardown still thaws and kills
            self.error = exc
        finally:
            self.finish()

    def finish(self) -> None:
        """End every open episode at once: thaw, restart, remount (idempotent)."""
        while self._ends:
            _, _, action, target = heapq.heappop(self._ends)
            try:
                self._end(action, target)
            except BaseException as exc:
                self.error = self.error or exc

    def _later(self, seconds: float, action: str, target: int) -> None:
        self._tiebreak += 1
        heapq.heappush(self._ends, (self.history.now() + seconds, self._tiebreak, action, target))

    def _log(self, action: str, target: int, **fields: object) -> None:
        self.history.record("fault", action=action, target=target, down=sorted(self.down), lost=sorted(self.lost),
                            mounts_down=sorted(self.mounts_down), **fields)

    # ---- starting a fault ---------------------------------------------------------------

    def _start(self, fault: Fault) -> None:
        reason = self._refusal(fault)
        if reason:
            self.skipped += 1
            self._log("skip", fault.target, planned=fault.describe(), reason=reason)
            return
        c, i = self.cluster, fault.target
        if fault.kind == "kill-peer":
            c.kill_peer(i)
            self.down[i] = "killed"
            self._later(fault.duration, "restart-peer", i)
        elif fault.kind == "freeze-peer":
            c.freeze_peer(i)
            self.down[i] = "frozen"
            self._later(fault.duration, "thaw-peer", i)
        elif fault.kind == "wipe-peer":
            c.wipe_peer(i)
            self.lost.add(i)
        else:
            c.kill_mount(i, lose_cache=fault.kind == "lose-mount")
            if fault.kind == "lose-mount":
                self.oracle.forget_view(i)
            self.mounts_down.add(i)
            self._later(fault.duration, "remount", i)
        self._log(fault.kind, i, planned=fault.describe())

    def _refusal(self, fault: Fault) -> str:
        """Why `fault` cannot run now ('' if it can)."""
        i = fault.target
        if fault.kind in MOUNT_FAULTS:
            return "that mount is down already" if i in self.mounts_down else ""
        if i in self.down or i in self.lost:
            return f"peer {i} is {self.down.get(i, 'lost')} already"
        over = len(self.down) + len(self.lost) + 1 > self.budget
        if over and (fault.kind == "wipe-peer" or not self.aggressive):
            return f"budget: {len(self.down)} down and {len(self.lost)} lost of n-k = {self.budget}"
        return ""

    # ---- ending a fault -----------------------------------------------------------------

    def _end(self, action: str, target: int) -> None:
        c = self.cluster
        if action == "restart-peer":
            c.restart_peer(target)
            self.down.pop(target, None)
        elif action == "thaw-peer":
            c.thaw_peer(target)
            self.down.pop(target, None)
        elif action == "remount":
            if self.lost:
                self._repair(target)
            self._remount(target)
            self.mounts_down.discard(target)
        self._log(action, target)

    def _repair(self, mount: int) -> None:
        """`pluto check --repair --now` on the home of the mount that is down; clears the lost peers on exit 0."""
        home = self.cluster.mounts[mount].vol.home
        wiped = sorted(self.lost)
        start = time.monotonic()
        res = self.cluster.cli(home, "check", "--repair", "--now", "--json", timeout=self.repair_timeout)
        try:
            summary = json.loads(res.stdout)
        except ValueError:
            summary = {}
        entry = {"mount": mount, "wiped": wiped, "exit": res.returncode, "seconds": round(time.monotonic() - start, 1),
                 "packs_repaired": summary.get("packs_repaired"), "problems": summary.get("problems", [])[:5],
                 "stderr": res.stderr.strip()[-300:]}
        if res.returncode == 0:
            # Trust, but verify: a plain check must now find every pack whole, or the wiped peers
            # still count as lost (and repair claimed a success it did not have).
            after = self.cluster.cli(home, "check", "--json", timeout=self.repair_timeout)
            try:
                verdict = json.loads(after.stdout)
            except ValueError:
                verdict = {}
            entry["check_after"] = {k: verdict.get(k) for k in ("packs_degraded", "packs_unreadable", "problems")}
            if verdict.get("packs_degraded") == 0 and verdict.get("packs_unreadable") == 0:
                self.lost.clear()
            else:
                # Another mount still running may have stored a new pack in between (with a peer
                # down, short of a column): then this is only a note.
                others = [m.index for m in self.cluster.mounts if m.index != mount and m.up.is_set()]
                self.history.find(Finding(
                    "repair", None, f"`pluto check --repair --now` exits 0 only when every pack is whole "
                    f"(peers {wiped} were wiped)", f"a check right after it: {entry['check_after']}",
                    f"exit {after.returncode}; repair output: {summary}"[:1500]
                    + (f"\nmounts {others} were running meanwhile" if others else ""), violation=not others))
        self.repairs.append(entry)
        self._log("repair", mount, **entry)

    def _remount(self, i: int) -> None:
        """Mount home `i` again; a mount that will not come back within a few tries is a finding."""
        for attempt in range(1, REMOUNT_TRIES + 1):
            try:
                self.cluster.remount(i)
                return
            except RuntimeError as exc:
                self._log("remount-failed", i, attempt=attempt, error=str(exc))
                time.sleep(2.0)
        vol = self.cluster.mounts[i].vol
        # Beyond the budget (--aggressive) the root folder may really be out of reach.
        within = len(self.down) + len(self.lost) <= self.budget
        self.history.find(Finding(
            "mount-start", None, f"mount {i} comes back ({len(self.down)} peers down, {len(self.lost)} lost)",
            f"it failed {REMOUNT_TRIES} times", self.cluster.log_tail(vol), violation=within))

