"""The final checks, once the workload and the nemesis have stopped and every peer is back.

1. The workload mounts finish: a clean unmount (SIGTERM uploads what is
   pending) within the wait, exit 0, no "could not upload everything".
2. A new device: a fresh home restored from the 24 words (`pluto restore`).
3. No flips: every folder is listed by several fresh processes (probe.py,
   which reads each folder as `pluto ls` does) and must read the same each
   time; a folder that cannot be read at all with every peer up is a finding.
4. Nothing acknowledged is lost: through a fresh mount of that home, every
   tracked path must be in a state the oracle allows (oracle.expected).
5. No wedged slot: through the same fresh mount, a new file in every folder,
   fsync'd, must succeed, and after the mount is gone a fresh process must
   list it.
6. Still readable without n-k peers: with a seeded choice of n-k peers
   (fewer if some wiped peer was never repaired) killed, a fresh process
   must list every folder and read every file as the fresh mount did.
7. No impossible acknowledgement: an fsync that had a new folder version to
   publish (a write or append with fsync) cannot have returned 0 while so
   many peers were down for its whole duration that no majority of a
   folder's replicas could answer (only reachable with --aggressive).
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import time
from pathlib import Path

from pluto_fs.grid.testing import MountedVolume
from pluto_fs.home import Config, Home

from .fixture import Cluster
from .history import Finding, History
from .oracle import ABSENT, DIR, Oracle, State, classify, matches, render, render_set
from .settings import Settings
from .workload import decode, join, segment, split

UNREADABLE = "unreadable"
CORRUPT = "corrupt"
PEERS_WAIT = 30.0  # seconds for the coordinator to list every restarted peer as alive again
DEGRADED_ROUNDS = 2  # reads with n-k peers killed, each with another seeded choice of peers
RESTART_MARGIN = 2.0  # seconds a restarted peer may have answered before the history says it is back


def wait_for_peers(cluster: Cluster, home: Home, history: History) -> None:
    """Until the coordinator lists every peer alive (so the unmounts can place data on them all)."""
    deadline = time.monotonic() + PEERS_WAIT
    alive = 0
    while time.monotonic() < deadline:
        res = cluster.cli(home, "peers", "--json", timeout=30)
        try:
            alive = sum(1 for p in json.loads(res.stdout) if p["alive"])
        except (ValueError, KeyError, TypeError):
            alive = 0
        if alive >= cluster.peers:
            return
        time.sleep(1.0)
    history.record("note", text=f"only {alive} of {cluster.peers} peers listed alive after {PEERS_WAIT:g} s")


def finish_mounts(cluster: Cluster, history: History, settings: Settings) -> None:
    """Clean unmount of every workload mount; one that cannot finish is a finding."""
    for m in cluster.mounts:
        if m.vol.proc is None or not m.up.is_set():
            history.record("note", text=f"mount {m.index} was not running at the end; nothing to unmount")
            continue
        m.expected_down = True
        m.up.clear()
        code, seconds = cluster.stop_mount(m.vol, settings.unmount_wait)
        log = m.vol.log_path.read_text(errors="replace") if m.vol.log_path.exists() else ""
        history.record("phase", name="unmount", mount=m.index, exit=code, seconds=round(seconds, 1))
        if code is None:
            history.find(Finding("unmount", None, f"mount {m.index} unmounts within {settings.unmount_wait:g} s",
                                 "it was still running and was killed", cluster.log_tail(m.vol)))
        elif code != 0:
            history.find(Finding("unmount", None, f"mount {m.index} exits 0 after a clean unmount",
                                 f"exit code {code}", cluster.log_tail(m.vol)))
        elif "could not upload everything" in log.split("stopping: uploading what is pending")[-1]:
            history.find(Finding("unmount", None, f"mount {m.index} uploads everything before it unmounts",
                                 "'could not upload everything' in its log", cluster.log_tail(m.vol)))


def probe(cluster: Cluster, home: Home, *flags: str) -> tuple[dict[str, dict] | None, subprocess.CompletedProcess]:
    """Run probe.py for `home` in a fresh process: (its JSON listing, or None if it printed none; the process)."""
    res = cluster.python("tools.checker.probe", "--home", str(home.path), *flags, timeout=300)
    try:
        return json.loads(res.stdout), res
    except ValueError:
        return None, res


def probe_rounds(cluster: Cluster, home: Home, history: History, rounds: int) -> list[dict[str, dict]]:
    """List every folder from `rounds` fresh processes; report flips and unreadable folders."""
    listings: list[dict[str, dict]] = []
    for r in range(rounds):
        listing, res = probe(cluster, home)
        if listing is None:
            history.find(Finding("unreadable", "", "a fresh process lists the volume",
                                 f"probe exit {res.returncode}", res.stderr.strip()[-500:]))
        else:
            listings.append(listing)
        history.record("phase", name="probe", round=r, exit=res.returncode)
    folders = sorted({f for listing in listings for f in listing})
    for folder in folders:
        seen = [listing.get(folder) for listing in listings]
        errors = [s["error"] for s in seen if s and "error" in s]
        # A folder some rounds did not reach at all (its parent read differently) flips too.
        outcomes = {"(not reached)" if s is None else json.dumps(s["entries"], sort_keys=True)
                    for s in seen if s is None or "entries" in s}
        if errors:
            history.find(Finding("unreadable", folder, "the folder reads with every peer up",
                                 f"{len(errors)} of {len(seen)} fresh reads failed", errors[0]))
        if len(outcomes) > 1:
            history.find(Finding("flip", folder, "the same listing from every fresh process",
                                 f"{len(outcomes)} different listings in {len(seen)} reads",
                                 _listing_diff([s for s in seen if s and "entries" in s])))
    return listings


def _listing_diff(reads: list[dict]) -> str:
    """What differs between folder reads: per read, its sequence number and the names not in every read."""
    names = [set(r["entries"]) for r in reads]
    common = set.intersection(*names) if names else set()
    changed = {n for n in common if len({json.dumps(r["entries"][n]) for r in reads}) > 1}
    parts = []
    for i, r in enumerate(reads):
        only = sorted(set(r["entries"]) - common)
        parts.append(f"read {i}: seq {r['seq']}, {len(r['entries'])} names" + (f", also {only}" if only else ""))
    if changed:
        parts.append(f"same names, different versions: {sorted(changed)}")
    return "; ".join(parts)


def found_state(root: Path, path: str) -> State:
    """What the fresh mount shows at `path`: ABSENT, DIR, a file's content, UNREADABLE or CORRUPT."""
    full = root / path
    try:
        st = os.lstat(full)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return ABSENT
        return f"{UNREADABLE}: {errno.errorcode.get(exc.errno or 0, exc)}"
    if os.path.isdir(full):
        return DIR
    try:
        data = full.read_bytes()
    except OSError as exc:
        return f"{UNREADABLE}: {errno.errorcode.get(exc.errno or 0, exc)} ({st.st_size} bytes listed)"
    state = decode(data)
    return state if state is not None else f"{CORRUPT}: {len(data)} bytes that are no checker content"


def check_paths(vol: MountedVolume, oracle: Oracle, history: History) -> dict[str, State]:
    """Compare every tracked path on the fresh mount with what the oracle allows; return what was found."""
    found_all: dict[str, State] = {}
    for path in oracle.paths():
        found = found_all[path] = found_state(vol.path, path)
        expected = oracle.expected(path)
        if matches(found, expected):
            continue
        history.find(Finding(classify(found, expected), path, render_set(expected),
                             found if isinstance(found, str) and found not in (ABSENT, DIR) else render(found),
                             "read through a fresh mount of a home restored from the seed"))
    return found_all


def check_writable(cluster: Cluster, vol: MountedVolume, home: Home, listing: dict[str, dict],
                   history: History, settings: Settings) -> int:
    """A new file in every folder, fsync'd through the fresh mount, then listed by a fresh process."""
    folders = sorted(f for f, s in listing.items() if "entries" in s)
    written: list[str] = []
    for i, folder in enumerate(folders):
        path = join(folder, f"zz-probe-{i}")
        try:
            fd = os.open(vol.path / path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, segment(f"probe.{i}", 100))
                os.fsync(fd)
            finally:
                os.close(fd)
            written.append(path)
        except OSError as exc:
            history.find(Finding("wedged", folder, "a new file in the folder can be fsync'd",
                                 f"{errno.errorcode.get(exc.errno or 0, exc)}", cluster.log_tail(vol)))
    code, _ = cluster.stop_mount(vol, settings.unmount_wait)
    if code != 0:
        history.find(Finding("unmount", None, "the final-check mount unmounts cleanly", f"exit code {code}",
                             cluster.log_tail(vol)))
    after = probe(cluster, home)[0] or {}
    for path in written:
        folder, name = split(path)
        if name not in after.get(folder, {}).get("entries", {}):
            history.find(Finding("wedged", folder, f"{name} (fsync returned 0) is listed by a fresh process",
                                 "it is not", json.dumps(after.get(folder, {}))[:300]))
    return len(written)


def degraded_reads(cluster: Cluster, home: Home, found: dict[str, State], lost: set[int], history: History,
                   settings: Settings) -> int:
    """Check 6: kill n-k peers (minus those still lost), read everything from a fresh process, restart
    them; a folder or file that no longer reads as before is a finding. Return the rounds run."""
    down_count = settings.fault_budget - len(lost)
    if down_count <= 0:
        history.record("note", text=f"no degraded reads: peers {sorted(lost)} are still lost (never repaired)")
        return 0
    rng = random.Random(f"pluto-checker/{settings.seed}/degraded")
    healthy = [i for i in range(cluster.peers) if i not in lost]
    for r in range(DEGRADED_ROUNDS):
        down = sorted(rng.sample(healthy, down_count))
        history.record("phase", name="degraded-read", round=r, killed=down, lost=sorted(lost))
        for i in down:
            cluster.kill_peer(i)
        try:
            listing, res = probe(cluster, home, "--read")
        finally:
            for i in down:
                cluster.restart_peer(i)
        if listing is None:
            history.find(Finding("degraded", "",
                                 f"the volume reads with peers {down} down (n-k = {settings.fault_budget})",
                                 f"probe exit {res.returncode}", res.stderr.strip()[-500:]))
            continue
        for path, state in found.items():
            if not isinstance(state, tuple):  # folders, absent paths, what was unreadable already
                continue
            folder, name = split(path)
            seen = listing.get(folder, {})
            got = seen.get("read", {}).get(name) or seen.get("error") or "not listed"
            if got != render(state):
                history.find(Finding("degraded", path, f"{render(state)}, as with every peer up, with peers {down} "
                                     f"down (n-k = {settings.fault_budget}; lost: {sorted(lost)})", got))
    return DEGRADED_ROUNDS


def impossible_acks(history: History, peers: int) -> int:
    """Check 7: writes whose fsync returned 0 while fewer peers than a majority of a folder's replicas
    were up for the whole call (and a little longer, since a restart is logged once it is done).
    One finding for all of them; return how many there were."""
    replicas = Config().slot_replicas
    majority = min(replicas, peers) // 2 + 1
    events = history.snapshot()
    changes = [(e["t"], len(e["down"])) for e in events if e["type"] == "fault" and "down" in e]

    def fewest_down(t0: float, t1: float) -> int:
        before = [n for t, n in changes if t <= t0]
        during = [n for t, n in changes if t0 < t <= t1 + RESTART_MARGIN]
        return min([before[-1] if before else 0, *during])

    bad = [e for e in events if e["type"] == "op" and e["ok"] and e["acked"] and e["kind"] in ("write", "append")
           and peers - fewest_down(e["t0"], e["t"]) < majority]
    if bad:
        examples = "\n".join(f"{e['t0']:.2f}-{e['t']:.2f} {e['id']} {e['what']}: acked {', '.join(e['acked'])}"
                             for e in bad[:8])
        history.find(Finding(
            "impossible-ack", None,
            f"fsync fails (or waits) while fewer than {majority} of {peers} peers are up: a folder's {replicas} "
            "replicas cannot have a majority", f"{len(bad)} writes acknowledged that way", examples))
    return len(bad)


def final_checks(cluster: Cluster, oracle: Oracle, history: History, settings: Settings, lost: set[int]) -> dict:
    """Run checks 1-7 (module doc); findings go to the history; return counts for the report.

    `lost` are the peers wiped and never repaired: they count against the degraded reads' budget."""
    stats: dict = {}
    first_home = cluster.mounts[0].vol.home
    wait_for_peers(cluster, first_home, history)
    history.record("phase", name="finish-mounts")
    finish_mounts(cluster, history, settings)
    history.record("phase", name="restore")
    try:
        fresh_home = cluster.restore_home(cluster.root / "fresh" / "home")
    except RuntimeError as exc:
        history.find(Finding("restore", None, "pluto restore from the 24 words succeeds", str(exc)))
        return stats
    history.record("phase", name="flips")
    listings = probe_rounds(cluster, fresh_home, history, settings.probe_rounds)
    stats["folders"] = len(listings[0]) if listings else 0
    history.record("phase", name="paths")
    try:
        vol = cluster.fresh_mount(fresh_home, "fresh")
    except RuntimeError as exc:
        history.find(Finding("mount-start", None, "a fresh mount of the restored home starts", str(exc)))
        return stats
    found = check_paths(vol, oracle, history)
    stats["paths_checked"] = len(found)
    history.record("phase", name="writable")
    first_listing = listings[0] if listings else {"": {"entries": {}}}
    stats["folders_written"] = check_writable(cluster, vol, fresh_home, first_listing, history, settings)
    stats["degraded_rounds"] = degraded_reads(cluster, fresh_home, found, lost, history, settings)
    stats["impossible_acks"] = impossible_acks(history, cluster.peers)
    return stats
