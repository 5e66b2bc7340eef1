"""`pluto mount`: run the FUSE filesystem over the user's volume until unmounted.

Lifecycle: open the volume and the journal → resume whatever the journal says
is pending → mount → serve requests while a background task uploads closed
files and publishes changed folders → on SIGINT/SIGTERM/SIGHUP or `pluto
unmount`, flush everything, then unmount. The mount process writes a small
status file (`cache/mount.json`) that `pluto status` reads.

No error ends the background loops (pluto_fs/mount/retrying.py): each failure is
retried with backoff, logged when it is news, and counted in the status file
(`problems`), so the mount stays up and `pluto status` says what it retries.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from pluto_fs.home import Home
from pluto_fs.malloc_tuning import tune_malloc
from pluto_fs.mount.fuse_ops import PlutoOperations
from pluto_fs.mount.retrying import EXPECTED, Problems, Retrying, describe, leaf_errors
from pluto_fs.volume.short_packs import complete_short_packs_once, place_short_packs
from pluto_fs.volume.volume import Volume, open_volume
from pluto_fs.writeback.journal_state import LocalChanges, open_journal
from pluto_fs.writeback.namespace import Namespace
from pluto_fs.writeback.quota import Quota
from pluto_fs.writeback.write_back import WriteBack

log = logging.getLogger(__name__)

HEALTH_SAMPLE = 32  # packs audited per background round
ALLOWANCE_REFRESH = 3.0  # seconds between storage-exchange refreshes


@dataclass
class MountOptions:
    """How to mount."""

    mountpoint: Path
    allow_other: bool = False
    op_timeout: float = 30.0
    debug: bool = False


def is_mounted(path: Path) -> bool:
    """True if `path` is a mountpoint right now (per /proc/self/mounts)."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f)


def pid_file(home: Home) -> Path:
    """Where a running mount records its pid and mountpoint."""
    return home.cache / "mount.json"


async def _statfs(volume: Volume, quota: Quota) -> tuple[int, int]:
    """Usable bytes (total, free) for df: the storage exchange allowance, divided by the
    expansion n/k, capped by the raw space live peers have; never 0 or absurdly large."""
    peers = await volume.net.peers()
    k, n = volume.packs.k, volume.packs.n
    total = sum(p.capacity for p in peers.values() if p.alive) * k // n
    free = sum(p.free for p in peers.values() if p.alive) * k // n
    if quota.allowance is not None:
        allowed, used = quota.allowance
        total = min(total, allowed * k // n)
        free = min(free, max(0, allowed - used) * k // n)
    return max(total, 1), max(0, min(free, total))


async def _replay_journal(namespace: Namespace, retrying: Retrying) -> None:
    """After a crash, bring every journaled folder back into the namespace so its uploads resume."""
    replayed = 0

    async def replay() -> None:
        nonlocal replayed
        replayed = await namespace.replay_journal()

    while not await retrying.attempt(replay):
        await retrying.backoff()
    if replayed:
        log.info("resumed the pending changes of %d folders from the journal", replayed)


def _write_status(home: Home, write_back: WriteBack, volume: Volume, mountpoint: Path, health: dict | None = None,
                  problems: Problems | None = None) -> None:
    files, size, dirs = write_back.pending()
    stats = volume.packs.stats
    status = {
        "pid": os.getpid(),
        "mountpoint": str(mountpoint),
        "updated": time.time(),
        "pending_files": files,
        "pending_bytes": size,
        "pending_folders": dirs,
        "uploaded_bytes": stats.fragment_bytes_sent,
        "downloaded_bytes": stats.fragment_bytes_received,
        "packs_uploaded": stats.packs_uploaded,
        "chunk_bytes_packed": stats.chunk_bytes_packed,
        "fetches_hedged": stats.fetches_hedged,
        "columns_short": stats.columns_short,
        "packs_short": len(volume.packs.short_packs()),  # a column no peer holds yet: pluto_fs/volume/short_packs.py
        "slow_peers": [peer.hex() for peer in volume.packs.fetch_order.troubled_peers()],
        "health": health or {},
        "problems": problems.as_status() if problems is not None else {},
    }
    _replace_status_file(pid_file(home), json.dumps(status).encode())


STATUS_EVERY = 1.0  # seconds between rewrites of the status file when nothing changes
STATUS_CHECK = 0.1  # seconds between looks at what is pending (cheap: counts sets in memory)
STATUS_RESERVE = 8192  # bytes the status file is padded to, so a full disk can still take a rewrite in place


def _replace_status_file(path: Path, data: bytes) -> None:
    """Write the status file atomically; on a full disk, over the old one in place.

    The status matters most when something is wrong, a full disk included,
    and a new file needs space a full disk does not have. So the file is
    padded with spaces (valid JSON) to STATUS_RESERVE bytes: its blocks can
    then be rewritten in place without new space. Readers retry a file they
    catch half rewritten.
    """
    padded = data + b" " * max(0, STATUS_RESERVE - len(data))
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(padded)
        os.replace(tmp, path)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.exists():
            raise
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, padded, 0)
        os.ftruncate(fd, len(padded))
    finally:
        os.close(fd)


async def _health_loop(volume: Volume, interval: float, margin: int, grace: float, state: dict,
                       retrying: Retrying) -> None:
    """Background auditor and repairer: every `interval`, audit a sample of packs and repair
    those with fewer than k + `margin` durable fragments, counting peers silent for less than
    `grace` seconds as still holding theirs (docs/TRUST.md has the rule, docs/SIMULATION.md the why)."""
    from pluto_fs.volume.health import check

    state.update(grace=grace)

    async def audit() -> None:
        report = await check(volume, volume.keys.root, repair=True, repair_below=volume.packs.k + margin,
                             sample=HEALTH_SAMPLE, progress=lambda msg: state.update(progress=msg), grace=grace)
        state.update(last_check=time.time(), packs=report.packs, degraded=report.packs_degraded,
                     unreadable=report.packs_unreadable, waiting=report.packs_waiting,
                     repaired=state.get("repaired", 0) + report.packs_repaired,
                     rebuilt=state.get("rebuilt", 0) + report.fragments_rebuilt, problems=report.problems[:3])

    while True:
        await trio.sleep(max(interval, retrying.delay()))
        state.update(running=True, progress="starting")
        try:
            await retrying.attempt(audit)
        finally:
            state.update(running=False, progress="")


async def _keep_running(loop: Callable[[], Awaitable[None]], retrying: Retrying) -> None:
    """Run a loop that is meant to run forever; if it ever fails, record it and start it again after a backoff."""
    while True:
        await retrying.attempt(loop)
        await trio.sleep(max(1.0, retrying.delay()))


async def _share_poll(namespace: Namespace, interval: float, retrying: Retrying) -> None:
    """Owners' changes to what they share appear within `interval` seconds."""

    async def refresh() -> None:
        namespace.refresh_shared()

    while True:
        await trio.sleep(max(interval, retrying.delay()))
        await retrying.attempt(refresh)


async def _allowance_loop(quota: Quota, volume: Volume, retrying: Retrying) -> None:
    """Keep the storage-exchange figures fresh so writes can be refused (ENOSPC) at once."""

    async def refresh() -> None:
        a = await volume.net.coordinator.allowance()
        quota.set_allowance(a.allowed, a.used)

    while True:
        await retrying.attempt(refresh)
        await trio.sleep(max(ALLOWANCE_REFRESH, retrying.delay()))


async def _status_loop(home: Home, write_back: WriteBack, volume: Volume, mountpoint: Path, health: dict,
                       problems: Problems, retrying: Retrying) -> None:
    async def write() -> None:
        _write_status(home, write_back, volume, mountpoint, health, problems)

    # Rewritten every second, and at once when what is pending changes: `cp f /mnt; pluto status`
    # must never show the state from before the copy as "all uploaded".
    while True:
        await retrying.attempt(write)
        written, since = write_back.pending(), trio.current_time()
        # Polled, not an event: what is pending is counted from the namespace's sets, which many places change.
        while write_back.pending() == written and trio.current_time() - since < STATUS_EVERY:  # noqa: ASYNC110
            await trio.sleep(STATUS_CHECK)


async def run_mount(home: Home, opts: MountOptions, coordinator: str | None = None,
                    *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> LocalChanges:
    """Mount and serve until a signal or an external unmount; upload what is pending, then unmount.

    Returns what is still only on this machine after that final upload
    (empty when everything reached the network). The caller holds the home
    lock (pluto_fs/home_lock.py).
    """
    tune_malloc()  # before the worker threads that would each get an arena exist
    journal = open_journal(home)  # a damaged journal is refused here, before a cache file is touched
    try:
        async with open_volume(home, coordinator) as volume:
            from pluto_fs.volume.social import shares_for_mount

            quota = Quota(volume.packs.n / volume.packs.k)
            namespace = Namespace(volume, journal, home.cache / "files", volume.keys.root,
                                  lambda: shares_for_mount(home), quota)
            write_back = WriteBack(namespace, volume, journal)
            await namespace.children(namespace.root)  # fail early (and clearly) if the network is unreachable
            ops = PlutoOperations(namespace, write_back, opts.op_timeout, lambda: _statfs(volume, quota))
            options = set(pyfuse3.default_options)
            options |= {"fsname=pluto", "subtype=pluto"}
            if opts.allow_other:
                options.add("allow_other")
            if opts.debug:
                options.add("debug")
            pyfuse3.init(ops, str(opts.mountpoint), options)
            unmounted = False
            problems = Problems()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write_back.run, problems.loop("write_back", "write-back"))
                    nursery.start_soon(_keep_running, lambda: place_short_packs(volume),
                                       problems.loop("short_packs", "placing missing fragment columns", max_delay=60))
                    nursery.start_soon(_replay_journal, namespace,
                                       problems.loop("replay", "resuming journaled folders", max_delay=30))
                    nursery.start_soon(write_back.run_refresh,
                                       problems.loop("refresh", "reading folders changed elsewhere", max_delay=30))
                    health: dict = {}
                    nursery.start_soon(_status_loop, home, write_back, volume, opts.mountpoint, health, problems,
                                       problems.loop("status", "writing the status file"))
                    nursery.start_soon(_allowance_loop, quota, volume,
                                       problems.loop("exchange", "storage exchange figures", max_delay=60))
                    config = home.config()
                    nursery.start_soon(_share_poll, namespace, config.share_poll,
                                       problems.loop("shares", "reloading shares", max_delay=300))
                    nursery.start_soon(_health_loop, volume, config.audit_interval, config.repair_margin,
                                       config.repair_grace, health,
                                       problems.loop("audit", "background audit", max_delay=3600))

                    async def stop_on_signal() -> None:
                        # SIGHUP too: closing the terminal of a foreground mount uploads and unmounts.
                        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                            async for _ in signals:
                                log.info("stopping: uploading what is pending, then unmounting")
                                nursery.cancel_scope.cancel()
                                return

                    nursery.start_soon(stop_on_signal)
                    task_status.started()

                    async def serve() -> None:
                        nonlocal unmounted
                        await pyfuse3.main()
                        unmounted = True  # unmounted from outside (fusermount -u)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(serve)
            finally:
                try:
                    with trio.CancelScope(shield=True):
                        await _final_upload(write_back, volume)
                        try:
                            _write_status(home, write_back, volume, opts.mountpoint, problems=problems)
                        except OSError as exc:
                            log.warning("could not write the status file: %s", exc)
                finally:
                    pyfuse3.close(unmount=not unmounted)
            files, size, dirs = write_back.pending()
            return LocalChanges(files, size, dirs)
    finally:
        journal.close()
        pid_file(home).unlink(missing_ok=True)


FINAL_SHORT_PACKS_TIME = 60.0  # seconds the unmount spends at most completing packs short of a column


async def _final_upload(write_back: WriteBack, volume: Volume) -> None:
    """Upload everything before unmounting; a failure is logged (what is left stays in the journal).

    Packs stored with fewer than n columns (a peer was away) get one more
    try at their missing columns too: until then they survive fewer peer
    losses than the code promises, and the next mount may be far off.
    """
    try:
        await write_back.flush_all()
    except Exception as exc:  # groups too: whatever happens, the mount must still unmount
        errors = leaf_errors(exc)
        bug = next((e for e in errors if not isinstance(e, EXPECTED)), None)
        log.error("could not upload everything before unmounting (%s); it stays in the journal and resumes "
                  "at the next mount", describe(errors), exc_info=bug)
    with trio.move_on_after(FINAL_SHORT_PACKS_TIME):
        try:
            await complete_short_packs_once(volume)
        except Exception as exc:
            log.warning("could not complete packs short of a fragment column (%s)", describe(leaf_errors(exc)))
    left = len(volume.packs.short_packs())
    if left:
        log.warning("%d packs are still short of a fragment column (a peer is missing); the next mount "
                    "places it", left)
