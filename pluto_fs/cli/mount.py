"""`pluto mount`, `unmount`, `status`, `peers`, `demo`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pluto_fs import home_lock
from pluto_fs.errors import HomeError, PlutoError
from pluto_fs.home import Home, code_config, home_path
from pluto_fs.mount.run import MountOptions, is_mounted, pid_file, run_mount
from pluto_fs.store.packs import DEFAULT_K, DEFAULT_N
from pluto_fs.units import format_size
from pluto_fs.volume.risk import PeerCounts, assess, at_risk
from pluto_fs.writeback.journal_state import LocalChanges, read_local_changes

if TYPE_CHECKING:
    from pluto_fs.net.peer_states import PeerState
    from transport.coordinator.client import PeerRecord


def _check_mountpoint(path: Path) -> None:
    if not path.is_dir():
        raise HomeError(f"mountpoint {path} is not a directory; create it first (mkdir -p {path})")
    if is_mounted(path):
        raise HomeError(f"{path} is already mounted; run `pluto unmount {path}` first")


def _left_behind(left: LocalChanges, next_time: str) -> int:
    """Exit status after a final upload: 0 if nothing stayed local, else 1 and one line saying what did."""
    if left.empty():
        return 0
    print(f"pluto: {left.describe()} {left.verb()} still only on this machine; {next_time} "
          "(`pluto status` lists what is waiting)", file=sys.stderr)
    return 1


def cmd_mount(args: argparse.Namespace) -> int:
    """Mount the volume (in the background unless -f)."""
    home = Home(home_path(args.home))
    home.config()  # a clear error now rather than from the background process
    mountpoint = Path(args.mountpoint).resolve()
    home_lock.check_free(home)  # before the mountpoint: "in use by the mount on X" says more than "X is mounted"
    _check_mountpoint(mountpoint)
    if not args.foreground:
        argv = [sys.executable, "-m", "pluto_fs.cli.main", "--log-level", args.log_level, "mount", "-f",
                str(mountpoint), "--home", str(home.path), "--timeout", str(args.timeout)]
        if args.coordinator:
            argv += ["--coordinator", args.coordinator]
        if args.allow_other:
            argv.append("--allow-other")
        log_path = home.cache / "mount.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if is_mounted(mountpoint):
                print(f"mounted your pluto volume on {mountpoint} (log: {log_path})")
                return 0
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no log"]
                raise PlutoError(f"mount failed: {tail[0]}")
            time.sleep(0.1)
        proc.terminate()
        raise PlutoError(f"mount did not come up within 60 s; see {log_path}")
    opts = MountOptions(mountpoint, allow_other=args.allow_other, op_timeout=args.timeout)
    with home_lock.hold(home, "mount", mountpoint):
        left = trio.run(run_mount, home, opts, args.coordinator)
    return _left_behind(left, "uploading resumes at the next `pluto mount`")


def cmd_unmount(args: argparse.Namespace) -> int:
    """Upload what is pending, then unmount."""
    mountpoint = Path(args.mountpoint).resolve()
    home = Home(home_path(args.home))
    info = _status_file(home)
    if info and Path(info.get("mountpoint", "")) == mountpoint and _alive(info.get("pid", 0)):
        pid = info["pid"]
        os.kill(pid, signal.SIGTERM)
        print(f"unmounting {mountpoint}: uploading what is still pending…", file=sys.stderr)
        deadline = time.monotonic() + args.wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            raise PlutoError(f"the mount process {pid} is still uploading after {args.wait:g} s; "
                             "it will finish on its own (or run `pluto unmount` again)")
        return _report_local(home)
    if not is_mounted(mountpoint):
        raise HomeError(f"{mountpoint} is not mounted")
    res = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if res.returncode != 0:
        raise PlutoError(f"fusermount3 could not unmount {mountpoint}: {res.stderr.strip()}")
    return _report_local(home)


def _report_local(home: Home) -> int:
    """After the mount process is gone: 0 if the journal holds nothing, else say what stayed local, 1."""
    return _left_behind(read_local_changes(home), "uploading resumes at the next `pluto mount`")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return pid > 0


def _status_file(home: Home) -> dict | None:
    # A mount on a full disk rewrites the file in place (mount._replace_status_file): a read
    # that catches it half written tries again.
    for _ in range(5):
        try:
            return json.loads(pid_file(home).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            time.sleep(0.05)
    return None


def _bar(done: int, total: int, width: int = 24) -> str:
    frac = 1.0 if total <= 0 else min(1.0, done / total)
    full = int(frac * width)
    return "[" + "#" * full + "-" * (width - full) + f"] {frac * 100:3.0f}%"


def _duration(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 5.5 h, 3.0 d."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _state_text(record: PeerRecord, state: PeerState, grace: float) -> str:
    """One peer's state as `pluto status` and `pluto peers` print it."""
    from pluto_fs.net.peer_states import PeerState

    if state is PeerState.HEALTHY:
        return "healthy"
    if record.disqualified:
        return "LOST (disqualified)"
    if record.offline_for is None:
        return "LOST (offline)"
    if state is PeerState.OFFLINE:
        return f"offline {_duration(record.offline_for)} of {_duration(grace)}"
    return f"LOST (offline {_duration(record.offline_for)})"


def cmd_status(args: argparse.Namespace) -> int:
    """What is uploading, which peers are healthy, what is at risk."""
    home = Home(home_path(args.home))
    config = home.config()
    info = _status_file(home)
    mount_alive = bool(info) and _alive(info.get("pid", 0))
    # What only this machine holds: the running mount's own figures, else the journal (read-only).
    local, local_problem = LocalChanges(), None
    if mount_alive:
        local = LocalChanges(info.get("pending_files", 0), info.get("pending_bytes", 0), info.get("pending_folders", 0))
    else:
        try:
            local = read_local_changes(home)
        except PlutoError as exc:
            local_problem = str(exc)

    async def peers() -> tuple[list, object]:
        from transport.coordinator.client import CoordinatorClient
        from transport.protocol.pool import open_pool

        async with open_pool(home.device_key()) as pool:
            coordinator = CoordinatorClient.from_pool(pool, config.coordinator)
            return await coordinator.list_peers(), await coordinator.allowance()

    try:
        records, allowance = trio.run(peers)
        peer_error = None
    except Exception as exc:  # the status must show even with the coordinator down
        records, allowance, peer_error = [], None, str(exc)
    from pluto_fs.net.peer_states import PeerState, peer_state

    grace = config.repair_grace
    states = {p.id: peer_state(p, grace) for p in records}
    alive = [p for p in records if states[p.id] is PeerState.HEALTHY]
    offline = [p for p in records if states[p.id] is PeerState.OFFLINE]
    lost = [p for p in records if states[p.id] is PeerState.LOST]
    status = {
        "mounted": mount_alive,
        "mountpoint": info.get("mountpoint") if mount_alive else None,
        "pending_files": local.files,  # when not mounted: what the journal holds
        "pending_bytes": local.bytes,
        "pending_folders": local.folders,
        # when the mount last wrote these figures (it does every second, and at once on a change)
        "as_of": info.get("updated") if mount_alive else time.time(),
        "journal_error": local_problem,
        "uploaded_bytes": info.get("uploaded_bytes", 0) if mount_alive else 0,
        # peers the mount saw fail or fall silent in the last minute: its reads ask them last
        "slow_peers": info.get("slow_peers", []) if mount_alive else [],
        # packs stored with a fragment column no peer acknowledged: the mount is placing it
        "packs_short": info.get("packs_short", 0) if mount_alive else 0,
        "health": info.get("health", {}) if mount_alive else {},
        # failures the mount is retrying: {loop: {name, count, since, last}}
        "problems": info.get("problems", {}) if mount_alive else {},
        "peers_total": len(records),
        "peers_alive": len(alive),
        "peers_offline": len(offline),
        "peers_lost": len(lost),
        "repair_grace": grace,
        "k": config.k,
        "n": config.n,
        "device_id": home.device_id(),
        "exchange": None if allowance is None else {
            "offered": allowance.offered, "grace": allowance.grace,
            "allowed": allowance.allowed, "used": allowance.used,
        },
        "coordinator_error": peer_error,
        "peers": [{"id": p.id.hex(), "address": p.address, "state": states[p.id].value, "alive": p.alive,
                   "offline_for": p.offline_for, "disqualified": p.disqualified, "member": p.member, "uptime": p.uptime,
                   "reputation": p.reputation, "free": p.free} for p in records],
    }
    counts = None if peer_error else PeerCounts(len(alive), len(offline), len(lost))
    risk = assess(counts, config.k, config.n, _duration(grace), local,
                  "the upload journal cannot be read: changes not uploaded may be only on this machine"
                  if local_problem else None)
    status["risk"] = risk
    status["at_risk"] = at_risk(risk)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    if mount_alive:
        print(f"mounted on {status['mountpoint']}")
        pend = status["pending_bytes"]
        sent = status["uploaded_bytes"]
        print(f"uploading: {status['pending_files']} files ({format_size(pend)}), "
              f"{status['pending_folders']} folders waiting  {_bar(sent, sent + pend)}")
        if status["packs_short"]:
            print(f"{status['packs_short']} packs are missing a fragment column; placing it as soon as a peer is free")
        h = status["health"]
        if h.get("running"):
            print(f"repair: {h.get('progress', '')}")
        elif h.get("last_check"):
            print(f"last audit: {time.strftime('%H:%M:%S', time.localtime(h['last_check']))}, "
                  f"{h.get('degraded', 0)} degraded and {h.get('unreadable', 0)} unreadable packs in the sample "
                  f"({h.get('waiting', 0)} waiting for offline peers), {h.get('repaired', 0)} repaired since mount")
        for key, problem in status["problems"].items():
            print(_problem_text(key, problem))
    else:
        gone = info.get("mountpoint") if info else None
        if gone and is_mounted(Path(gone)):
            print(f"the mount process ended without unmounting {gone}: run `pluto unmount {gone}`")
        if local_problem:
            print(f"not mounted; {local_problem}")
        elif local.empty():
            print("not mounted (nothing waiting to upload)")
        else:
            print(f"not mounted: {local.describe()} {local.verb()} only on this machine (in the journal); "
                  "uploading resumes at the next `pluto mount`")
    print(f"device id: {status['device_id']}  (give it to `pluto serve --owner` to earn space)")
    if allowance is not None:
        print(f"storage exchange: offered {format_size(allowance.offered)}, "
              f"allowed {format_size(allowance.allowed)} (incl. {format_size(allowance.grace)} grace), "
              f"used {format_size(allowance.used)} {_bar(allowance.used, allowance.allowed)}  (raw bytes on peers)")
    if peer_error:
        print(f"coordinator unreachable: {peer_error}")
    else:
        print(f"peers: {len(alive)} of {len(records)} healthy, {len(offline)} offline, {len(lost)} lost "
              f"(data needs {config.k} of {config.n} per pack; repair grace {_duration(grace)})")
        slow = set(status["slow_peers"])
        for p in records:
            note = "  slow to answer lately: asked last" if p.id.hex() in slow else ""
            print(f"  {_state_text(p, states[p.id], grace):<24} {p.address:<22} uptime {p.uptime * 100:5.1f}%  "
                  f"reputation {p.reputation:.2f}  free {format_size(p.free)}{note}")
    print(f"at risk: {status['risk']}")
    return 0


def _problem_text(key: str, problem: dict) -> str:
    """"write-back: 12 attempts failed since 13:02:11, last: …; will keep trying"."""
    count = problem.get("count", 0)
    since = problem.get("since")
    when = f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if since else ""
    return (f"{problem.get('name', key)}: {count} attempt{'s' if count != 1 else ''} failed{when}, "
            f"last: {problem.get('last', '?')}; will keep trying")


def cmd_peers(args: argparse.Namespace) -> int:
    """List storage peers known to the coordinator."""
    home = Home(home_path(args.home))
    config = home.config()

    async def run() -> list:
        from transport.coordinator.client import CoordinatorClient
        from transport.protocol.pool import open_pool

        async with open_pool(home.device_key()) as pool:
            return await CoordinatorClient.from_pool(pool, config.coordinator).list_peers()

    records = trio.run(run)
    from pluto_fs.net.peer_states import peer_state

    states = {p.id: peer_state(p, config.repair_grace) for p in records}
    if args.json:
        print(json.dumps([{"id": p.id.hex(), "address": p.address, "state": states[p.id].value, "alive": p.alive,
                           "offline_for": p.offline_for, "disqualified": p.disqualified, "member": p.member,
                           "capacity": p.capacity, "free": p.free, "uptime": p.uptime, "reputation": p.reputation,
                           "audits_ok": p.audits_ok, "audits_failed": p.audits_failed} for p in records], indent=2))
        return 0
    print(f"{'address':<22} {'state':<24} {'capacity':>10} {'free':>10} {'uptime':>7} {'rep':>5}  audits ok/failed")
    for p in records:
        print(f"{p.address:<22} {_state_text(p, states[p.id], config.repair_grace):<24} {format_size(p.capacity):>10} "
              f"{format_size(p.free):>10} {p.uptime * 100:6.1f}% {p.reputation:5.2f}  {p.audits_ok}/{p.audits_failed}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A coordinator, N peers and a mount on loopback, in the foreground."""
    state = Path(args.state).resolve()
    mountpoint = Path(args.mountpoint).resolve()
    mountpoint.mkdir(parents=True, exist_ok=True)
    _check_mountpoint(mountpoint)
    if not 1 <= args.peers <= 32:
        raise HomeError("--peers must be from 1 to 32")
    home = Home(state / "home")
    with home_lock.hold(home, "demo", mountpoint):
        left = _run_demo(args, state, mountpoint, home)
    return _left_behind(left, "uploading resumes when you run `pluto demo` again with the same --state")


def _run_demo(args: argparse.Namespace, state: Path, mountpoint: Path, home: Home) -> LocalChanges:
    from cryptree.identity import new_seed, seed_to_phrase
    from pluto_fs.grid.localgrid import GridError, LocalGrid, wait_for_peers

    # The grid runs in sessions of its own, so the terminal's Ctrl-C (SIGINT to the foreground
    # process group) reaches only this process: it uploads what is pending while the peers are
    # still up, unmounts, and only then stops them. They stop too if this process dies.
    grid = LocalGrid(state / "grid", peers=args.peers, capacity=args.capacity, heartbeat=2.0, log_level="warning",
                     owner=home.device_id(), die_with_parent=True)
    try:
        grid.start()
    except GridError:
        grid.stop()
        raise
    try:
        k, n = min(DEFAULT_K, args.peers), min(DEFAULT_N, args.peers)
        if not home.exists():
            seed = new_seed()
            home.create(seed, code_config(grid.coordinator.address, k, n))
            print("created a new identity; its recovery phrase (shown once):")
            print("  " + seed_to_phrase(seed))
        else:
            config = home.config()
            config.coordinator = grid.coordinator.address
            home.save_config(config)
        print(f"coordinator {grid.coordinator.address}, {args.peers} storage peers, state in {state}")
        print(f"mounting on {mountpoint} — Ctrl-C uploads what is pending, unmounts and stops everything")
        sys.stdout.flush()
        opts = MountOptions(mountpoint, allow_other=args.allow_other, op_timeout=args.timeout)

        async def main() -> LocalChanges:
            await wait_for_peers(home, min(args.peers, n))
            return await run_mount(home, opts)

        left = trio.run(main)
        print("unmounted; stopping the grid")
        return left
    finally:
        grid.stop()


def add_commands(sub: argparse._SubParsersAction, coordinator_type, home_help: str) -> None:
    """Register the mount commands on the main parser."""
    p = sub.add_parser("mount", help="mount your pluto volume as a drive")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.add_argument("--coordinator", type=coordinator_type, metavar="HOST:PORT", help="override the configured one")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--allow-other", action="store_true", help="let other local users use the mount")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="longest a file operation waits for the network before failing with EIO/ETIMEDOUT")
    p.set_defaults(func=cmd_mount)
    p = sub.add_parser("unmount", help="upload what is pending and unmount")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS", help="longest to wait for uploads")
    p.set_defaults(func=cmd_unmount)
    p = sub.add_parser("status", help="what is uploading, which peers are healthy, what is at risk")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("peers", help="list the storage peers the coordinator knows")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_peers)
    p = sub.add_parser("demo", help="run a local grid (coordinator + peers) and mount it, all on 127.0.0.1")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--peers", type=int, default=DEFAULT_N, help=f"storage peers to start (default {DEFAULT_N})")
    p.add_argument("--capacity", default="2G", metavar="SIZE", help="capacity of each peer (default 2G)")
    p.add_argument("--state", default=str(Path.home() / ".pluto-demo"), metavar="DIR",
                   help="where the demo keeps its grid and identity (default ~/.pluto-demo)")
    p.add_argument("--allow-other", action="store_true", help="let other local users use the mount")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="network wait limit per operation")
    p.set_defaults(func=cmd_demo)
