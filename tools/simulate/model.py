"""The simulation core: peers with churn, packs of n fragments, audits and repair.

Time is in hours. Everything random comes from two independent streams seeded
from `Params.seed`: one drives the peers and owners (sessions, departures,
disk failures, joins), the other the packs (placement, owners). So for one
seed every (k, n, threshold) sees exactly the same network history (common
random numbers), and differences between codes are not noise of the network.

How a run goes (see docs/SIMULATION.md for the model and its sources):

* Peer *machines* alternate online/offline sessions; each machine holds one
  peer *id* at a time. A departure ends the id for good without notice (the
  machine goes offline and never returns). A disk failure ends the id too, but
  the machine stays: it comes back empty under a new id. New peers join as a
  Poisson process.
* The state is examined at audit instants, every `audit_hours`. A fragment is
  *healthy* when its peer answers (is online) or, with `healthy="grace"`, has
  been unreachable for at most `grace_hours`. A fragment whose peer lost its
  disk fails its storage challenge and is unhealthy at once.
* A pack is *lost* when fewer than k of its fragments still exist anywhere.
* Repair: when fewer than `threshold` fragments of a pack are healthy, its
  owner (if online, with `owner_gated`) downloads any k fragments that are on
  online peers (if there are k), rebuilds every unhealthy fragment and uploads
  them to new online peers. It takes (k + rebuilt) fragment transfers at
  `repair_mb_s`; the new fragments count from then on.

Only pack state that can change is touched at each audit: an index from peer
id to the fragment slots it holds (sorted runs, merged like an LSM tree) finds
the packs that a peer's change of state affects.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

YEAR_H = 8760.0
DAY_H = 24.0


@dataclass(frozen=True)
class Params:
    """Every knob of the model. Defaults and their sources: docs/SIMULATION.md."""

    peers: int = 10_000                 # storage peers at the start
    packs: int = 1_000_000              # simulated packs (objects)
    days: float = 365.0                 # measured period
    warmup_days: float = 365.0          # simulated before measuring: packs reach their steady state
    # temporary unavailability: alternating online/offline sessions per machine
    on_hours: float = 16.0              # mean online session (exponential)
    off_hours: float = 4.0              # mean short offline session: nights, reboots (exponential)
    absences_per_year: float = 4.0      # long absences per machine and year: holidays, a laptop left shut
    absence_days: float = 4.0           # mean length of a long absence (exponential)
    # permanent loss of a peer's fragments
    departures_per_year: float = 0.20   # per peer: leaves for good, without notice
    disk_failures_per_year: float = 0.02  # per peer: store lost, machine comes back empty
    joins_per_year: float = -1.0        # new peers per year, network-wide; < 0 means departures x peers
    mass_failure_day: float = -1.0      # day of the measured year of one correlated event (a bad release,
    mass_failure_fraction: float = 0.05  # ransomware) wiping this share of all stores at once; < 0: none
    # capacity and placement (the coordinator's rule: weight log2(2 + free MiB))
    capacity_gb: float = 500.0          # median capacity offered by a peer
    capacity_sigma: float = 1.0         # lognormal spread of capacities
    fill: float = 0.5                   # share of the offered capacity in use at the start
    # detection and repair
    grace_hours: float = 72.0           # unreachable this long = gone, for repair purposes
    audit_hours: float = 6.0            # audit (and repair check) interval
    healthy: str = "grace"              # "grace": reachable or away < grace; "online": reachable now
    owner_gated: bool = True            # repair runs on the owner's client, only while it is online
    repair_mb_s: float = 1.0            # throughput of one pack's repair, MB/s (10^6 B/s)
    pack_mib: float = 8.0               # pack size (docs/DATA_PATH.md)
    availability_sample: int = 2_000    # packs sampled at each audit for read availability
    seed: int = 1

    def __post_init__(self) -> None:
        if self.healthy not in ("grace", "online"):
            raise ValueError("healthy must be 'grace' or 'online'")
        if self.peers < 1 or self.packs < 1 or self.days <= 0 or self.warmup_days < 0:
            raise ValueError("peers, packs and days must be positive")
        if self.audit_hours <= 0 or self.on_hours <= 0 or self.off_hours <= 0 or self.absence_days <= 0:
            raise ValueError("durations must be positive")
        if not 0 < self.fill < 1:
            raise ValueError("fill must be between 0 and 1")

    @property
    def absence_probability(self) -> float:
        """Probability that an offline period is a long absence (to give absences_per_year)."""
        a = self.absences_per_year
        if a <= 0:
            return 0.0
        on, off, ab = self.on_hours, self.off_hours, self.absence_days * DAY_H
        q = a * (on + off) / (YEAR_H - a * (ab - off))
        if not 0 <= q < 1:
            raise ValueError("absences_per_year too high for the session lengths")
        return q

    @property
    def mean_off_hours(self) -> float:
        q = self.absence_probability
        return (1 - q) * self.off_hours + q * self.absence_days * DAY_H

    @property
    def availability(self) -> float:
        """Long-run fraction of time a machine is online."""
        return self.on_hours / (self.on_hours + self.mean_off_hours)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class Code:
    k: int
    n: int
    threshold: int  # repair when fewer than this many fragments are healthy; 0 = never repair

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"bad code {self.k}-of-{self.n}")
        if self.threshold != 0 and not self.k < self.threshold <= self.n:
            raise ValueError(f"threshold for {self.k}-of-{self.n} must be 0 (no repair) or in {self.k + 1}..{self.n}")

    @property
    def label(self) -> str:
        t = "no repair" if self.threshold == 0 else f"repair <{self.threshold}"
        return f"{self.k}-of-{self.n}, {t}"


def wilson(x: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion x/n."""
    if n <= 0:
        return (0.0, 1.0)
    p = x / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (0.0 if x == 0 else max(0.0, c - h), 1.0 if x == n else min(1.0, c + h))


# ---------------------------------------------------------------- sessions


class _Sessions:
    """Alternating online/offline sessions of many machines (vectorised)."""

    def __init__(self, p: Params, rng: np.random.Generator, size: int, capacity: int | None = None):
        self.p = p
        self.rng = rng
        self.q = p.absence_probability
        cap = max(size, capacity or size)
        self.size = size
        self.up = np.zeros(cap, bool)
        self.next_toggle = np.full(cap, np.inf)
        self.off_since = np.full(cap, np.inf)  # when it went offline; inf while online
        # stationary start: online with the long-run probability, residual times memoryless
        up = rng.random(size) < p.availability
        self.up[:size] = up
        n_up = int(up.sum())
        n_off = size - n_up
        self.next_toggle[:size][up] = rng.exponential(p.on_hours, n_up)
        # an offline machine is in a long absence with the time-weighted probability
        ab = p.absence_days * DAY_H
        w_long = self.q * ab / ((1 - self.q) * p.off_hours + self.q * ab)
        long = rng.random(n_off) < w_long
        mean = np.where(long, ab, p.off_hours)
        self.next_toggle[:size][~up] = rng.exponential(mean)
        self.off_since[:size][~up] = -rng.exponential(mean)  # age of the current offline period
        self.online_hours = 0.0  # for measured availability
        self.observed_hours = 0.0

    def _grow(self, need: int) -> None:
        cap = len(self.up)
        if need <= cap:
            return
        new = max(need, int(cap * 1.5) + 16)
        for name, fill in (("up", False), ("next_toggle", np.inf), ("off_since", np.inf)):
            a = getattr(self, name)
            b = np.full(new, fill, dtype=a.dtype)
            b[:cap] = a
            setattr(self, name, b)

    def draw_off(self, size: int) -> np.ndarray:
        long = self.rng.random(size) < self.q
        return np.where(long, self.rng.exponential(self.p.absence_days * DAY_H, size),
                        self.rng.exponential(self.p.off_hours, size))

    def toggle_until(self, limit: np.ndarray | float) -> None:
        """Apply every on/off transition at or before `limit` (per machine or scalar)."""
        s = self.size
        while True:
            idx = np.flatnonzero(self.next_toggle[:s] <= (limit if np.isscalar(limit) else limit[:s]))
            if idx.size == 0:
                return
            tt = self.next_toggle[idx]
            was_up = self.up[idx]
            going_off = idx[was_up]
            going_on = idx[~was_up]
            self.up[going_off] = False
            self.off_since[going_off] = tt[was_up]
            self.next_toggle[going_off] = tt[was_up] + self.draw_off(going_off.size)
            self.up[going_on] = True
            self.off_since[going_on] = np.inf
            self.next_toggle[going_on] = tt[~was_up] + self.rng.exponential(self.p.on_hours, going_on.size)


class _Peers(_Sessions):
    """Peer ids on machines: sessions plus departures, disk failures and joins."""

    def __init__(self, p: Params, rng: np.random.Generator):
        years = (p.days + p.warmup_days) * DAY_H / YEAR_H
        joins = p.joins_per_year if p.joins_per_year >= 0 else p.departures_per_year * p.peers
        mass = (p.mass_failure_day >= 0) * p.mass_failure_fraction
        expected = p.peers * (1 + years * p.disk_failures_per_year + mass) + joins * years
        self.mass_at = (p.warmup_days + p.mass_failure_day) * DAY_H if p.mass_failure_day >= 0 else np.inf
        super().__init__(p, rng, p.peers, capacity=int(expected * 1.2) + 64)
        self.join_rate = joins / YEAR_H
        cap = len(self.up)
        self.current = np.zeros(cap, bool)
        self.current[: p.peers] = True
        self.end = np.full(cap, np.inf)      # when this id ends (departure or disk failure)
        self.end_kind = np.zeros(cap, np.int8)  # 1 departure, 2 disk failure
        self.cap_gb = np.zeros(cap)
        self.load = np.zeros(cap, np.int64)  # fragments held (simulated ones)
        self.cap_gb[: p.peers] = self._draw_capacity(p.peers)
        self._draw_ends(np.arange(p.peers), 0.0)
        self.counts = {"departures": 0, "disk_failures": 0, "joins": 0, "mass_failures": 0}

    def _draw_capacity(self, size: int) -> np.ndarray:
        return self.p.capacity_gb * np.exp(self.p.capacity_sigma * self.rng.standard_normal(size))

    def _draw_ends(self, ids: np.ndarray, t0: np.ndarray | float) -> None:
        p = self.p
        never = np.full(ids.size, np.inf)
        dep = (self.rng.exponential(YEAR_H / p.departures_per_year, ids.size)
               if p.departures_per_year > 0 else never)
        disk = (self.rng.exponential(YEAR_H / p.disk_failures_per_year, ids.size)
                if p.disk_failures_per_year > 0 else never)
        self.end[ids] = t0 + np.minimum(dep, disk)
        self.end_kind[ids] = np.where(dep <= disk, 1, 2)

    def _grow(self, need: int) -> None:
        cap = len(self.up)
        if need <= cap:
            return
        super()._grow(need)
        new = len(self.up)
        for name, fill in (("current", False), ("end", np.inf), ("end_kind", 0), ("cap_gb", 0.0), ("load", 0)):
            a = getattr(self, name)
            b = np.full(new, fill, dtype=a.dtype)
            b[:cap] = a
            setattr(self, name, b)

    def _new_ids(self, count: int) -> np.ndarray:
        self._grow(self.size + count)
        ids = np.arange(self.size, self.size + count)
        self.size += count
        return ids

    def advance(self, t0: float, t: float) -> None:
        """Bring every machine and id from time t0 to time t."""
        p, rng = self.p, self.rng
        # joins: a new machine arrives online with an empty store
        nj = rng.poisson(self.join_rate * (t - t0)) if self.join_rate > 0 else 0
        if nj:
            born = np.sort(rng.uniform(t0, t, nj))
            ids = self._new_ids(nj)
            self.up[ids] = True
            self.off_since[ids] = np.inf
            self.next_toggle[ids] = born + rng.exponential(p.on_hours, nj)
            self.current[ids] = True
            self.cap_gb[ids] = self._draw_capacity(nj)
            self._draw_ends(ids, born)
            self.counts["joins"] += nj
        # a correlated mass failure: a share of all current stores wiped at one instant
        if t0 < self.mass_at <= t:
            te = self.mass_at
            live = np.flatnonzero(self.current[: self.size] & (self.end[: self.size] > te))
            hit = live[rng.random(live.size) < p.mass_failure_fraction]
            self.end[hit] = te
            self.end_kind[hit] = 2
            self.counts["mass_failures"] += 1
        while True:
            s = self.size
            self.toggle_until(np.minimum(self.end[:s], t))
            dead = np.flatnonzero(self.current[:s] & (self.end[:s] <= t))
            if dead.size == 0:
                return
            te = self.end[dead]
            kind = self.end_kind[dead]
            self.current[dead] = False
            dep = dead[kind == 1]
            # a departed peer just stops answering; the client sees it offline since then
            self.off_since[dep] = np.where(self.up[dep], self.end[dep], self.off_since[dep])
            self.counts["departures"] += dep.size
            # a failed disk: the machine carries on under a new, empty id; the old id
            # fails its next storage challenge, so it is unhealthy at once
            fail = dead[kind == 2]
            self.counts["disk_failures"] += fail.size
            if fail.size:
                new = self._new_ids(fail.size)
                self.up[new] = self.up[fail]
                self.next_toggle[new] = self.next_toggle[fail]
                self.off_since[new] = self.off_since[fail]
                self.current[new] = True
                self.cap_gb[new] = self.cap_gb[fail]
                self._draw_ends(new, self.end[fail])
                self.off_since[fail] = -np.inf
            self.up[dead] = False
            self.next_toggle[dead] = np.inf

    def healthy(self, t: float) -> np.ndarray:
        s = self.size
        if self.p.healthy == "online":
            return self.up[:s].copy()
        return self.up[:s] | (t - self.off_since[:s] <= self.p.grace_hours)


# ---------------------------------------------------------------- index


class _SlotIndex:
    """peer id -> fragment slots (pack * n + column) holding it, as sorted runs.

    Entries are never removed in place: a lookup keeps only slots that still
    hold that id (F.flat[slot] == id), and merges drop stale entries. A slot
    that got the same id again (replaced, then chosen again) has two fresh
    entries; lookups return it once.
    """

    def __init__(self, F: np.ndarray):
        self.F = F
        self._stamp = np.zeros(F.size, np.int32)
        keys = F.ravel()
        order = np.argsort(keys, kind="stable")
        self.runs: list[tuple[np.ndarray, np.ndarray]] = [(keys[order].copy(), order.astype(np.int64))]

    def add(self, slots: np.ndarray, ids: np.ndarray) -> None:
        if slots.size == 0:
            return
        o = np.argsort(ids, kind="stable")
        self.runs.append((ids[o].astype(self.F.dtype), slots[o].astype(np.int64)))
        while len(self.runs) >= 2 and self.runs[-1][0].size * 2 >= self.runs[-2][0].size:
            (k2, v2), (k1, v1) = self.runs.pop(), self.runs.pop()
            k = np.concatenate([k1, k2])
            v = np.concatenate([v1, v2])
            fresh = self.F.ravel()[v] == k
            k, v = k[fresh], v[fresh]
            o = np.argsort(k, kind="stable")
            self.runs.append((k[o], v[o]))

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots currently holding any of `ids` (sorted, unique ids)."""
        out = []
        flat = self.F.ravel()
        ids = ids.astype(self.F.dtype)
        for keys, vals in self.runs:
            lo = np.searchsorted(keys, ids, "left")
            hi = np.searchsorted(keys, ids, "right")
            cnt = hi - lo
            total = int(cnt.sum())
            if total == 0:
                continue
            starts = np.repeat(lo - np.cumsum(cnt) + cnt, cnt)
            idx = starts + np.arange(total)
            v = vals[idx]
            out.append(v[flat[v] == keys[idx]])
        if not out:
            return np.zeros(0, np.int64)
        slots = np.concatenate(out)
        pos = np.arange(slots.size, dtype=np.int32)  # the same slot may come twice (two runs, or a merged run)
        self._stamp[slots] = pos
        slots = slots[self._stamp[slots] == pos]
        return slots


# ---------------------------------------------------------------- simulation

_PACK_ONLY = {"packs", "availability_sample", "repair_mb_s", "pack_mib", "owner_gated", "fill"}


class Timeline:
    """The network's history at every audit instant, shared by all codes of a run.

    It depends only on the peer and detection parameters and the seed (the
    fields outside `_PACK_ONLY`), so a sweep computes it once per process.
    Per audit it keeps, per peer id: online, current (its store exists),
    healthy (as the client judges it); per owner: online.
    """

    def __init__(self, p: Params):
        self.key = self.key_of(p)
        rng = np.random.default_rng([p.seed, 1])
        peers = _Peers(p, rng)
        owners = _Sessions(p, rng, p.peers)
        T = p.audit_hours
        self.audit_hours = T
        self.warmup_steps = round(p.warmup_days * DAY_H / T)
        self.steps = self.warmup_steps + round(p.days * DAY_H / T)
        self.up: list[np.ndarray] = []
        self.current: list[np.ndarray] = []
        self.healthy: list[np.ndarray] = []
        self.owner_up: list[np.ndarray] = []
        self.counts: list[dict] = []
        t = 0.0
        for step in range(self.steps + 1):
            if step:
                t0, t = t, step * T
                peers.advance(t0, t)
                owners.toggle_until(t)
            s = peers.size
            self.up.append(peers.up[:s].copy())
            self.current.append(peers.current[:s].copy())
            self.healthy.append(peers.healthy(t))
            self.owner_up.append(owners.up[: owners.size].copy())
            self.counts.append(dict(peers.counts))
        self.size = peers.size
        self.cap_gb = peers.cap_gb[: peers.size].copy()
        self.initial_capacity_gb = float(self.cap_gb[: p.peers].sum())

    @staticmethod
    def key_of(p: Params) -> tuple:
        return tuple((k, v) for k, v in p.to_dict().items() if k not in _PACK_ONLY)


_TIMELINES: dict[tuple, Timeline] = {}


def timeline_for(p: Params) -> Timeline:
    """The (cached) timeline for these parameters; one is kept per process."""
    key = Timeline.key_of(p)
    tl = _TIMELINES.get(key)
    if tl is None:
        _TIMELINES.clear()
        tl = _TIMELINES[key] = Timeline(p)
    return tl


class _Placement:
    """Capacity-aware choice of new peers for fragments (the coordinator's rule)."""

    def __init__(self, tl: Timeline, gb_per_frag: float):
        self.cap_gb = tl.cap_gb
        self.load = np.zeros(tl.size, np.int64)
        self.gb_per_frag = gb_per_frag

    def choose(self, rng: np.random.Generator, up: np.ndarray, current: np.ndarray, rows: np.ndarray,
               mask: np.ndarray, tries: int = 60) -> tuple[np.ndarray, np.ndarray]:
        """Fill the masked columns of `rows` with distinct eligible peers.

        Eligible: online, current, room for one more fragment; weight
        log2(2 + free MiB) as in the coordinator's find_peers. Returns the new
        rows and whether each row could be filled.
        """
        s = up.size
        free = self.cap_gb[:s] - self.load[:s] * self.gb_per_frag
        elig = np.flatnonzero(up & current & (free > self.gb_per_frag))
        rows = rows.copy()
        ok = np.ones(len(rows), bool)
        if elig.size == 0:
            ok[:] = False
            return rows, ok
        cw = np.cumsum(np.log2(2.0 + free[elig] * 1024.0))
        todo = np.arange(len(rows))
        for _ in range(tries):
            m = mask[todo]
            r, c = np.nonzero(m)
            pick = elig[np.minimum(np.searchsorted(cw, rng.random(r.size) * cw[-1], "right"), elig.size - 1)]
            sub = rows[todo]
            sub[r, c] = pick
            rows[todo] = sub
            srt = np.sort(sub, axis=1)
            todo = todo[(srt[:, 1:] == srt[:, :-1]).any(axis=1)]
            if todo.size == 0:
                break
        ok[todo] = False
        return rows, ok


def simulate(p: Params, code: Code, timeline: Timeline | None = None, check: bool = False) -> dict:
    """Run one (k, n, threshold) over the network; return the measurements.

    `check` recomputes every pack's counts from scratch at each audit and
    compares them with the incrementally kept ones (slow; for tests).
    """
    t_start = time.perf_counter()
    tl = timeline if timeline is not None else timeline_for(p)
    if tl.key != Timeline.key_of(p):
        raise ValueError("timeline was built for other parameters")
    k, n, tau = code.k, code.n, code.threshold
    rng = np.random.default_rng([p.seed, 2, k, n, tau])  # the packs' own stream
    T = tl.audit_hours
    w_steps, steps = tl.warmup_steps, tl.steps
    years = (steps - w_steps) * T / YEAR_H
    P = p.packs
    place = _Placement(tl, p.fill * tl.initial_capacity_gb / (P * n))

    # ---- initial placement: n distinct online peers per pack
    F, ok = place.choose(rng, tl.up[0], tl.current[0], np.zeros((P, n), np.int32), np.ones((P, n), bool), tries=200)
    if not ok.all():
        raise RuntimeError(f"only {int(tl.up[0].sum())} peers online, cannot place {n} distinct fragments")
    place.load += np.bincount(F.ravel(), minlength=place.load.size)
    owner = rng.integers(0, p.peers, P).astype(np.int32)
    index = _SlotIndex(F)
    H = tl.healthy[0][F].sum(axis=1).astype(np.int16)  # healthy fragments per pack
    exist = np.full(P, n, np.int16)                      # fragments that still exist
    lost = np.zeros(P, bool)
    lost_at = np.full(P, np.inf)
    needs = H < tau
    busy = np.zeros(P, bool)
    want = needs.copy()                    # needs & ~busy & ~lost, kept up to date
    mark = np.zeros(P, bool)
    fl_done = np.zeros(0)                  # repairs in flight: completion time, pack, new row, rebuilt columns
    fl_pack = np.zeros(0, np.int64)
    fl_rows = np.zeros((0, n), np.int32)
    fl_mask = np.zeros((0, n), bool)
    sample = rng.choice(P, size=min(P, p.availability_sample), replace=False)
    frag_bytes = p.pack_mib * 2**20 / k
    st = dict(repairs=0, fragments_rebuilt=0, traffic_packs=0.0, blocked_owner=0, blocked_online=0,
              blocked_placement=0, false_alarms=0, readable_sum=0.0, readable_n=0, online_sum=0.0,
              pending_sum=0)
    alive_at_start = P

    for step in range(1, steps + 1):
        t = step * T
        measuring = step > w_steps
        up, cur, h = tl.up[step], tl.current[step], tl.healthy[step]
        prev_h, prev_cur = tl.healthy[step - 1], tl.current[step - 1]

        # ---- repairs that finished: the rebuilt fragments replace the unhealthy ones
        done = np.zeros(0, np.int64)
        if fl_done.size:
            fin = fl_done <= t
            if fin.any():
                fp, fr, fm = fl_pack[fin], fl_rows[fin], fl_mask[fin]
                fl_done, fl_pack, fl_rows, fl_mask = fl_done[~fin], fl_pack[~fin], fl_rows[~fin], fl_mask[~fin]
                busy[fp] = False  # `want` is set again below: these packs are marked dirty
                alive = ~lost[fp]
                np.subtract.at(place.load, F[fp][fm & alive[:, None]], 1)  # abandoned copies: garbage
                np.subtract.at(place.load, fr[fm & ~alive[:, None]], 1)    # too late: pack already lost
                fp, fr, fm = fp[alive], fr[alive], fm[alive]
                F[fp] = np.where(fm, fr, F[fp])
                slots = (fp[:, None] * n + np.arange(n))[fm]
                index.add(slots, F.ravel()[slots])
                done = fp

        # ---- peers whose state changed: update their packs' counts
        m = prev_h.size
        changed = np.flatnonzero((h[:m] != prev_h) | (cur[:m] != prev_cur))
        if measuring:
            st["false_alarms"] += int((h[:m] & ~prev_h & cur[:m]).sum())  # declared gone, came back
        if changed.size:
            slots = index.lookup(changed)
            ids = F.ravel()[slots]
            pk = slots // n
            np.add.at(H, pk, h[ids].astype(np.int16) - prev_h[ids])
            np.add.at(exist, pk, cur[ids].astype(np.int16) - prev_cur[ids])
            mark[pk] = True
        if done.size:
            rows = F[done]
            H[done] = h[rows].sum(axis=1)
            exist[done] = cur[rows].sum(axis=1)
            mark[done] = True
        dirty = np.flatnonzero(mark)
        mark[dirty] = False
        if dirty.size:
            dirty = dirty[~lost[dirty]]
            gone = exist[dirty] < k
            lost[dirty[gone]] = True
            lost_at[dirty[gone]] = t
            needs[dirty] = (H[dirty] < tau) & ~gone
            want[dirty] = needs[dirty] & ~busy[dirty]

        # ---- start repairs: owner online, k fragments reachable, room on the network
        cand = np.flatnonzero(want) if tau else np.zeros(0, np.int64)
        if measuring:
            st["pending_sum"] += cand.size + fl_pack.size
        if cand.size:
            if p.owner_gated:
                up_owner = tl.owner_up[step][owner[cand]]
                if measuring:
                    st["blocked_owner"] += int((~up_owner).sum())
                cand = cand[up_owner]
            rows = F[cand]
            readable = up[rows].sum(axis=1) >= k
            if measuring:
                st["blocked_online"] += int((~readable).sum())
            cand, rows = cand[readable], rows[readable]
            mask = ~h[rows]
            new_rows, placed = place.choose(rng, up, cur, rows, mask)
            if measuring:
                st["blocked_placement"] += int((~placed).sum())
            cand, new_rows, mask = cand[placed], new_rows[placed], mask[placed]
            if cand.size:
                rebuilt = mask.sum(axis=1)
                np.add.at(place.load, new_rows[mask], 1)
                busy[cand] = True
                want[cand] = False
                dur_h = (k + rebuilt) * frag_bytes / (p.repair_mb_s * 1e6) / 3600.0
                fl_done = np.concatenate([fl_done, t + dur_h])
                fl_pack = np.concatenate([fl_pack, cand])
                fl_rows = np.concatenate([fl_rows, new_rows])
                fl_mask = np.concatenate([fl_mask, mask])
                if measuring:
                    st["repairs"] += cand.size
                    st["fragments_rebuilt"] += int(rebuilt.sum())
                    st["traffic_packs"] += float(((k + rebuilt) / k).sum())

        # ---- read availability of sampled packs; peer availability
        if measuring:
            smp = sample[~lost[sample]]
            if smp.size:
                st["readable_sum"] += float((up[F[smp]].sum(axis=1) >= k).mean())
                st["readable_n"] += 1
            st["online_sum"] += float(up[cur].mean())
        if step == w_steps:
            alive_at_start = int((~lost).sum())
        if check:
            live = ~lost
            assert (H[live] == h[F[live]].sum(axis=1)).all(), "healthy counts drifted"
            assert (exist[live] == cur[F[live]].sum(axis=1)).all(), "intact counts drifted"
            assert (want == (needs & ~busy & ~lost)).all(), "repair queue drifted"
            srt = np.sort(F[live], axis=1)
            assert not (srt[:, 1:] == srt[:, :-1]).any(), "two fragments of a pack on one peer"

    n_meas = max(1, steps - w_steps)
    losses = int(((lost_at > w_steps * T) & lost).sum())
    lo, hi = wilson(losses, alive_at_start)
    pack_years = alive_at_start * years
    c0, c1 = tl.counts[w_steps], tl.counts[steps]
    return {
        "k": k, "n": n, "threshold": tau, "expansion": n / k,
        "packs": alive_at_start, "years": years, "losses": losses,
        "p_loss": losses / alive_at_start if alive_at_start else float("nan"),
        "p_loss_lo": lo, "p_loss_hi": hi,
        "lost_in_warmup": P - alive_at_start,
        "repair_per_byte_year": st["traffic_packs"] / pack_years,
        "repairs_per_pack_year": st["repairs"] / pack_years,
        "fragments_rebuilt_per_pack_year": st["fragments_rebuilt"] / pack_years,
        "read_availability": st["readable_sum"] / max(1, st["readable_n"]),
        "peer_availability": st["online_sum"] / n_meas,
        "mean_waiting_or_repairing": st["pending_sum"] / n_meas / max(1, alive_at_start),
        "blocked_owner_offline": st["blocked_owner"],
        "blocked_too_few_online": st["blocked_online"],
        "blocked_no_placement": st["blocked_placement"],
        "false_alarms_per_peer_year": st["false_alarms"] / (p.peers * years),
        "peer_events": {key: c1[key] - c0[key] for key in c1},
        "peers_at_end": int(tl.current[steps].sum()),
        "seconds": time.perf_counter() - t_start,
        "params": p.to_dict(),
    }
