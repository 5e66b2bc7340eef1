"""Sweeps over codes and thresholds, tables, JSON and plots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import time

from tools.simulate.model import Code, Params, Timeline, simulate, timeline_for

PACKS_PER_TB = 1e12 / (8 * 2**20)           # 8 MiB packs in 10^12 bytes of user data
KBITS_PER_TB_PER_UNIT = 1e12 * 8 / 1e3 / (365.25 * 86400)  # 1 x stored/year, for 1 TB, in kbit/s

HELP = {
    "peers": "storage peers at the start",
    "packs": "packs simulated (each is one object of n fragments)",
    "days": "length of the measured period",
    "warmup_days": "simulated before measuring, so that packs are not all fresh",
    "on_hours": "mean online session of a machine (exponential)",
    "off_hours": "mean short offline session: nights, reboots (exponential)",
    "absences_per_year": "long absences per machine and year (holidays, laptop shut)",
    "absence_days": "mean length of a long absence (exponential)",
    "departures_per_year": "rate per peer of leaving for good without notice",
    "disk_failures_per_year": "rate per peer of losing its store (the machine comes back empty)",
    "joins_per_year": "new peers per year, network-wide (<0: departures x peers, a stable population)",
    "mass_failure_day": "day of the measured year on which one correlated event wipes --mass-failure-fraction "
                        "of all stores at once (<0: none)",
    "mass_failure_fraction": "share of stores wiped by the correlated event",
    "capacity_gb": "median capacity a peer offers (GB)",
    "capacity_sigma": "lognormal spread of capacities",
    "fill": "share of offered capacity in use at the start",
    "grace_hours": "a peer unreachable this long counts as gone for repair",
    "audit_hours": "interval of audits and repair checks",
    "healthy": "'grace': reachable or away < grace; 'online': reachable right now",
    "owner_gated": "repair only while the pack owner's client is online (true/false)",
    "repair_mb_s": "throughput of one pack's repair (MB/s)",
    "pack_mib": "pack size (MiB)",
    "availability_sample": "packs sampled at each audit to measure read availability",
    "seed": "random seed (same seed, same network history for every code)",
}

QUICK = dict(peers=2_000, packs=10_000, warmup_days=90.0)
FULL: dict = {}  # the defaults of Params


def parse_codes(spec: str) -> list[Code]:
    """'3-5,4-8@6,10-16@13/14' -> codes; no '@' = no repair plus every threshold k+1..n."""
    out = []
    for part in filter(None, (x.strip() for x in spec.split(","))):
        kn, _, th = part.partition("@")
        try:
            k, n = (int(x) for x in kn.split("-"))
            ths = [int(x) for x in th.split("/")] if th else [0, *range(k + 1, n + 1)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad code {part!r}: use K-N or K-N@T or K-N@T1/T2") from None
        out.extend(Code(k, n, t) for t in ths)
    return out


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {s!r}")


def _convert(name: str, value: str):
    ftype = {f.name: f.type for f in dataclasses.fields(Params)}[name]
    return {"int": int, "float": float, "str": str, "bool": _bool}[ftype](value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tools.simulate",
        description="Simulate a year of a churning peer-to-peer network and report, per k-of-n and "
                    "repair threshold, the probability that a pack is lost and the repair traffic. "
                    "Model and results: docs/SIMULATION.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true",
                    help=f"small network for a check in seconds ({', '.join(f'{k}={v}' for k, v in QUICK.items())})")
    ap.add_argument("--codes", default="3-5,4-8,10-16",
                    help="codes and thresholds: K-N (no repair and every threshold k+1..n), K-N@T or K-N@T1/T2; "
                         "T = repair when fewer than T fragments are healthy, 0 = never repair")
    ap.add_argument("--vary", metavar="PARAM=V1,V2,...", help="run the codes once per value of one parameter")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--json", metavar="FILE", help="write every result (with its parameters) to FILE")
    ap.add_argument("--plots", metavar="DIR", help="write simulation-loss.png, simulation-repair.png and "
                                                   "simulation-tradeoff.png to DIR")
    ap.add_argument("--from-json", metavar="FILE", nargs="+",
                    help="do not simulate: table and plots from earlier --json files (merged in order)")
    ap.add_argument("--recommend", metavar="K-N@T,...", help="mark these codes and thresholds on the plots")
    defaults = Params()
    g = ap.add_argument_group("model parameters (defaults: full run; --quick overrides peers, packs, warmup_days)")
    for f in dataclasses.fields(Params):
        default = FULL.get(f.name, getattr(defaults, f.name))
        g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=f.type.upper(),
                       type=lambda v, name=f.name: _convert(name, v), help=f"{HELP[f.name]} (default {default})")
    return ap


def _run_one(task: tuple[Params, Code]) -> dict:
    p, code = task
    return simulate(p, code, timeline_for(p))


def run_tasks(tasks: list[tuple[Params, Code]], jobs: int, log=sys.stderr) -> list[dict]:
    # the widest codes first, grouped by network, so both workers stay busy and reuse timelines
    order = sorted(range(len(tasks)),
                   key=lambda i: (repr(Timeline.key_of(tasks[i][0])), -tasks[i][1].n, -tasks[i][1].threshold))
    results: list[dict | None] = [None] * len(tasks)
    t0 = time.perf_counter()
    if jobs <= 1 or len(tasks) == 1:
        it = ((i, _run_one(tasks[i])) for i in order)
        pool = None
    else:
        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(jobs)
        it = zip(order, pool.imap(_run_one, [tasks[i] for i in order]), strict=True)
    try:
        for i, r in it:
            results[i] = r
            print(f"  [{time.perf_counter() - t0:6.1f} s] {tasks[i][1].label}: {r['losses']} of {r['packs']} lost, "
                  f"repair {r['repair_per_byte_year']:.2f} x stored/year ({r['seconds']:.1f} s)", file=log, flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return results  # type: ignore[return-value]


def fmt_p(r: dict) -> str:
    if r["losses"] == 0:
        return f"0 (< {r['p_loss_hi']:.1e})"
    return f"{r['p_loss']:.1e} [{r['p_loss_lo']:.1e}, {r['p_loss_hi']:.1e}]"


def table(results: list[dict], vary: str | None = None) -> str:
    head = ["code", "n/k", "repair when healthy <", "lost / packs", "P(pack lost in a year) [95 % CI]",
            "packs lost per TB-year", "repair traffic (x stored / year)", "kbit/s per TB",
            "fragments rebuilt / pack-year", "readable at a random instant"]
    if vary:
        head.insert(0, vary)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        per_tb = r["p_loss"] * PACKS_PER_TB if r["losses"] else r["p_loss_hi"] * PACKS_PER_TB
        row = [f"{r['k']}-of-{r['n']}", f"{r['expansion']:.2f}", str(r["threshold"]) if r["threshold"] else "never",
               f"{r['losses']:,} / {r['packs']:,}", fmt_p(r),
               (f"{per_tb:.3g}" if r["losses"] else f"< {per_tb:.2g}"),
               f"{r['repair_per_byte_year']:.2f}", f"{r['repair_per_byte_year'] * KBITS_PER_TB_PER_UNIT:.0f}",
               f"{r['fragments_rebuilt_per_pack_year']:.2f}", f"{r['read_availability']:.4f}"]
        if vary:
            row.insert(0, str(r["params"][vary]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def network_summary(results: list[dict]) -> str:
    r = results[0]
    ev = r["peer_events"]
    p = r["params"]
    return (f"network: {p['peers']:,} peers at the start, {r['peers_at_end']:,} at the end; in the measured year "
            f"{ev['departures']:,} departures, {ev['disk_failures']:,} disk failures, {ev['joins']:,} joins, "
            f"{ev['mass_failures']} mass failure{'s' * (ev['mass_failures'] != 1)}; "
            f"peers online {r['peer_availability']:.1%} of the time; "
            f"{r['false_alarms_per_peer_year']:.2f} false alarms per peer-year (declared gone, then back)")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    vary_name = None
    if a.from_json:
        results = []
        for path in a.from_json:
            with open(path) as f:
                doc = json.load(f)
            results += doc["results"]
            vary_name = vary_name or doc.get("vary")
    else:
        try:
            codes = parse_codes(a.codes)
        except (argparse.ArgumentTypeError, ValueError) as e:
            ap.error(str(e))
        base = dict(QUICK if a.quick else FULL)
        base.update({f.name: getattr(a, f.name) for f in dataclasses.fields(Params) if getattr(a, f.name) is not None})
        variants = [base]
        if a.vary:
            vary_name, _, vals = a.vary.partition("=")
            vary_name = vary_name.replace("-", "_")
            if vary_name not in Params.field_names() or not vals:
                ap.error(f"--vary: unknown parameter or no values: {a.vary!r}")
            variants = [{**base, vary_name: _convert(vary_name, v)} for v in vals.split(",")]
        try:
            tasks = [(Params(**v), c) for v in variants for c in codes]
        except (TypeError, ValueError) as e:
            ap.error(str(e))
        p0 = tasks[0][0]
        print(f"simulating {len(tasks)} configurations: {p0.peers:,} peers, {p0.packs:,} packs, "
              f"{p0.warmup_days:g} + {p0.days:g} days, audits every {p0.audit_hours:g} h, {a.jobs} jobs",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results = run_tasks(tasks, a.jobs)
        print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"command": sys.argv, "vary": vary_name, "seconds": time.perf_counter() - t0,
                           "results": results}, f, indent=1)
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(str(r["params"][vary_name]) if vary_name else "", []).append(r)
    for value, rs in groups.items():
        print((f"{vary_name} = {value}: " if vary_name else "") + network_summary(rs))
    print()
    print(table(results, vary_name))
    if a.plots:
        from tools.simulate.plot import plot_all
        rec = []
        if a.recommend:
            try:
                rec = [(c.k, c.n, c.threshold) for c in parse_codes(a.recommend)]
            except (argparse.ArgumentTypeError, ValueError) as e:
                ap.error(str(e))
            if any(t == 0 for _, _, t in rec):
                ap.error("--recommend needs K-N@T with a threshold")
        for path in plot_all(results, a.plots, rec):
            print(f"wrote {path}", file=sys.stderr)
    return 0
