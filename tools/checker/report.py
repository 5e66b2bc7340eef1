"""The report: a summary of what the run did, and each finding with the slice of history behind it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .history import Finding, History
from .workload import split

SLICE_OPS = 20  # operations shown per finding
SLICE_FAULTS = 20  # faults shown per finding


def summarize(history: History, extra: dict[str, Any]) -> dict[str, Any]:
    """Counts of operations, acknowledgements, faults and findings, plus `extra` (settings, stats)."""
    events = history.snapshot()
    ops = [e for e in events if e["type"] == "op"]
    faults = [e for e in events if e["type"] == "fault"]
    kinds: dict[str, int] = {}
    for f in faults:
        kinds[f["action"]] = kinds.get(f["action"], 0) + 1
    violations = [f for f in history.findings if f.violation]
    return {
        **extra,
        "ops": len(ops),
        "ops_ok": sum(1 for e in ops if e["ok"]),
        "ops_failed": sum(1 for e in ops if not e["ok"]),
        "acked_ops": sum(1 for e in ops if e["acked"]),
        "acks": sum(1 for e in events if e["type"] == "ack"),
        "faults": {k: v for k, v in sorted(kinds.items())},
        "faults_injected": sum(v for k, v in kinds.items() if k in
                               ("kill-peer", "freeze-peer", "wipe-peer", "kill-mount", "lose-mount")),
        "violations": len(violations),
        "notes": len(history.findings) - len(violations),
    }


def _relevant(event: dict[str, Any], path: str) -> bool:
    """An acknowledgement of `path`, an operation on it or that saw or acknowledged it, or (for a
    folder) an operation on a name directly in it."""
    if event["type"] == "ack":
        return event["path"] == path
    if event["type"] != "op":
        return False
    touched = [event["path"]] + ([event["dest"]] if event.get("dest") else [])
    if path in touched or any(s.startswith(path + "=") for s in event["acked"] + event["seen"]):
        return True
    return any(p and split(p)[0] == path for p in touched)


def _op_line(e: dict[str, Any]) -> str:
    result = "ok" if e["ok"] else e["error"] or "failed"
    line = f"  {e['t0']:8.2f}-{e['t']:<8.2f} {e['id']:>8}  {e['what']:<58} {result}"
    if e["acked"]:
        line += "  acked " + ", ".join(e["acked"])[:160]
    elif e["seen"]:
        line += "  saw " + ", ".join(e["seen"])[:120]
    return line


def _fault_line(e: dict[str, Any]) -> str:
    extra = ""
    if e["action"] == "repair":
        extra = f" exit {e.get('exit')} ({e.get('packs_repaired')} packs repaired) {e.get('problems') or ''}"
    elif e["action"] == "skip":
        extra = f" {e.get('planned')}: {e.get('reason')}"
    return (f"  {e['t']:8.2f} {e['action']} {e['target']}{extra}  "
            f"[down {e['down']}, lost {e['lost']}, mounts down {e['mounts_down']}]")


def history_slice(events: list[dict[str, Any]], finding: Finding) -> list[str]:
    """The operations behind a finding (on its path, or in its folder) up to the moment it was found,
    and the faults since the path's last acknowledgement before that, as report lines."""
    events = events[:finding.seq]  # what had happened when it was found (an op's own acks come after)
    if finding.path is None:
        faults = [e for e in events if e["type"] == "fault"]
        return ["  faults before it:", *map(_fault_line, faults[-SLICE_FAULTS:])]
    ops = [e for e in events if e["type"] == "op" and _relevant(e, finding.path)]
    acks = [e for e in events if e["type"] == "ack" and e["path"] == finding.path]
    since = acks[-1]["t"] if acks else 0.0
    faults = [e for e in events if e["type"] == "fault" and e["t"] >= since - 2.0]
    lines = [f"  operations on /{finding.path} (last {SLICE_OPS}):", *map(_op_line, ops[-SLICE_OPS:])]
    if acks:
        lines.append(f"  last acknowledged at {acks[-1]['t']:.2f} s by {acks[-1]['op']} as {acks[-1]['state']}")
    lines += [f"  faults since 2 s before that (last {SLICE_FAULTS}):", *map(_fault_line, faults[-SLICE_FAULTS:])]
    return lines


def render_text(summary: dict[str, Any], history: History) -> str:
    """The whole report as text."""
    events = history.snapshot()
    s = summary
    out = [
        f"pluto checker: seed {s['seed']}, {s['mounts']} mount(s), {s['peers']} peers"
        f"{', aggressive' if s.get('aggressive') else ''}, {s['seconds']:.0f} s",
        f"operations: {s['ops']} run ({s['ops_ok']} ok, {s['ops_failed']} failed), "
        f"{s['acked_ops']} acknowledged something ({s['acks']} acknowledgements)",
        f"faults: {s['faults_injected']} injected {s['faults']}",
        f"final checks: {s.get('paths_checked', 0)} paths, {s.get('folders', 0)} folders x {s.get('probe_rounds', 0)} "
        f"fresh reads, {s.get('folders_written', 0)} folders written, "
        f"{s.get('degraded_rounds', 0)} reads with n-k peers down",
    ]
    for r in s.get("repairs", []):
        problems = f"; problems: {r['problems'][:2]}" if r["problems"] else ""
        out.append(f"repair with mount {r['mount']}'s home: exit {r['exit']} in {r['seconds']} s, "
                   f"{r['packs_repaired']} packs repaired{problems}")
    if s.get("error"):
        out.append(f"THE CHECKER ITSELF FAILED: {s['error']}")
    violations = [f for f in history.findings if f.violation]
    notes = [f for f in history.findings if not f.violation]
    out.append(f"RESULT: {len(violations)} violation(s)" + (f", {len(notes)} note(s)" if notes else ""))
    for n, f in enumerate(violations + notes, 1):
        out.append("")
        out.append(f"[{n}] {'' if f.violation else '(note) '}{f.headline()}  (at {f.t:.1f} s)")
        if f.detail:
            out += ["  " + line for line in f.detail.splitlines()[-15:]]
        out += history_slice(events, f)
    return "\n".join(out) + "\n"


def write(directory: Path, summary: dict[str, Any], history: History) -> str:
    """Write report.txt and report.json into `directory`; return the text."""
    text = render_text(summary, history)
    (directory / "report.txt").write_text(text)
    data = {"summary": summary, "findings": [asdict(f) for f in history.findings]}
    (directory / "report.json").write_text(json.dumps(data, indent=2, default=str))
    return text
