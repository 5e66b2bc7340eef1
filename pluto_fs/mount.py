"""`pluto mount`: run the FUSE filesystem over the user's volume until unmounted.

Lifecycle: open the volume and the journal → resume whatever the journal says
is pending → mount → serve requests while a background task uploads closed
files and publishes changed folders → on SIGINT/SIGTERM or `pluto unmount`,
flush everything, then unmount. The mount process writes a small status file
(`cache/status.json`) that `pluto status` reads.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from transport.errors import TransportError

from .errors import PlutoError
from .fsmodel import FsModel
from .fuse_ops import PlutoOperations
from .home import Home
from .malloc_tuning import tune_malloc
from .journal import Journal
from .short_packs import place_short_packs
from .volume import Volume, open_volume

log = logging.getLogger(__name__)

IDLE_UPLOAD_AFTER = 2.0  # seconds a file open for writing must be quiet before it uploads anyway
PUBLISH_EVERY = 0.5  # seconds between write-back rounds
HEALTH_SAMPLE = 32  # packs audited per background round
ALLOWANCE_REFRESH = 3.0  # seconds between storage-exchange refreshes
UPLOAD_BATCH = 2000  # files per write-back round (bounds how long a round holds back folder publishing)


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


async def _statfs(volume: Volume, model: FsModel) -> tuple[int, int]:
    """Usable bytes (total, free) for df: the storage exchange allowance, divided by the
    expansion n/k, capped by the raw space live peers have; never 0 or absurdly large."""
    peers = await volume.net.peers()
    k, n = volume.packs.k, volume.packs.n
    total = sum(p.capacity for p in peers.values() if p.alive) * k // n
    free = sum(p.free for p in peers.values() if p.alive) * k // n
    if model.allowance is not None:
        allowed, used = model.allowance
        total = min(total, allowed * k // n)
        free = min(free, max(0, allowed - used) * k // n)
    return max(total, 1), max(0, min(free, total))


async def _replay_journal(model: FsModel) -> None:
    """After a crash, bring every journaled folder back into the model so its uploads resume."""
    while True:
        try:
            replayed = await model.replay_journal()
            if replayed:
                log.info("resumed the pending changes of %d folders from the journal", replayed)
            return
        except (PlutoError, TransportError) as exc:
            log.warning("resuming journaled folders will retry: %s", exc)
            await trio.sleep(10)


async def _write_back(model: FsModel) -> None:
    """Upload quiet files and publish changed folders, forever (errors are retried)."""
    while True:
        with trio.move_on_after(PUBLISH_EVERY):
            await model.changed.wait()
        model.changed = trio.Event()
        await trio.sleep(PUBLISH_EVERY)  # let a burst of changes settle into one publish
        try:
            now = time.monotonic()
            model.dirty_files -= {f for f in model.dirty_files if f.parent is None}
            ready = [f for f in model.dirty_files if f.writers == 0 or now - f.last_write > IDLE_UPLOAD_AFTER]
            await model.upload_files(ready[:UPLOAD_BATCH], wait_busy=False)
            await model.publish_dirty()
        except (PlutoError, OSError) as exc:
            log.warning("write-back will retry: %s", exc)
            await trio.sleep(2)


def _write_status(home: Home, model: FsModel, volume: Volume, mountpoint: Path, health: dict | None = None) -> None:
    files, size, dirs = model.pending()
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
        "packs_short": len(volume.packs.short_packs()),  # a column no peer holds yet: pluto_fs/short_packs.py
        "slow_peers": [peer.hex() for peer in volume.packs.fetch_order.troubled_peers()],
        "health": health or {},
    }
    tmp = pid_file(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, pid_file(home))


async def _health_loop(model: FsModel, volume: Volume, interval: float, margin: int, grace: float, state: dict) -> None:
    """Background auditor and repairer: every `interval`, audit a sample of packs and repair
    those with fewer than k + `margin` durable fragments, counting peers silent for less than
    `grace` seconds as still holding theirs (docs/TRUST.md has the rule, docs/SIMULATION.md the why)."""
    from .health import check

    state.update(grace=grace)
    while True:
        await trio.sleep(interval)
        state.update(running=True, progress="starting")
        try:
            report = await check(volume, volume.keys.root, repair=True, repair_below=volume.packs.k + margin,
                                 sample=HEALTH_SAMPLE, progress=lambda msg: state.update(progress=msg), grace=grace)
            state.update(last_check=time.time(), packs=report.packs, degraded=report.packs_degraded,
                         unreadable=report.packs_unreadable, waiting=report.packs_waiting,
                         repaired=state.get("repaired", 0) + report.packs_repaired,
                         rebuilt=state.get("rebuilt", 0) + report.fragments_rebuilt, problems=report.problems[:3])
        except (PlutoError, TransportError) as exc:
            log.warning("background audit failed, will retry: %s", exc)
        finally:
            state.update(running=False, progress="")


async def _refresh_loop(model: FsModel) -> None:
    """Read folders that were opened again from the network and merge what changed elsewhere."""
    while True:
        await model.refresh_event.wait()
        model.refresh_event = trio.Event()
        while model.refresh_wanted:
            d = next(iter(model.refresh_wanted))
            del model.refresh_wanted[d]
            try:
                await model.refresh(d)
            except (PlutoError, TransportError, OSError) as exc:
                log.info("reading a folder again failed (the local view stays): %s", exc)


async def _share_poll(model: FsModel, interval: float) -> None:
    """Owners' changes to what they share appear within `interval` seconds."""
    while True:
        await trio.sleep(interval)
        model.refresh_shared()


async def _allowance_loop(model: FsModel, volume: Volume) -> None:
    """Keep the storage-exchange figures fresh so writes can be refused (ENOSPC) at once."""
    while True:
        try:
            a = await volume.net.coordinator.allowance()
            model.allowance = (a.allowed, a.used)
        except TransportError as exc:
            log.info("storage exchange figures unavailable: %s", exc)
        await trio.sleep(ALLOWANCE_REFRESH)


async def _status_loop(home: Home, model: FsModel, volume: Volume, mountpoint: Path, health: dict) -> None:
    while True:
        _write_status(home, model, volume, mountpoint, health)
        await trio.sleep(1)


async def run_mount(home: Home, opts: MountOptions, coordinator: str | None = None,
                    *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Mount and serve until a signal or an external unmount; flush before returning."""
    tune_malloc()  # before the worker threads that would each get an arena exist
    journal = Journal(home.cache / "journal.sqlite")
    try:
        async with open_volume(home, coordinator) as volume:
            from .social import shares_for_mount

            model = FsModel(volume, journal, home.cache / "files", volume.keys.root, lambda: shares_for_mount(home))
            await model.children(model.root)  # fail early (and clearly) if the network is unreachable
            ops = PlutoOperations(model, opts.op_timeout, lambda: _statfs(volume, model))
            options = set(pyfuse3.default_options)
            options |= {"fsname=pluto", "subtype=pluto"}
            if opts.allow_other:
                options.add("allow_other")
            if opts.debug:
                options.add("debug")
            pyfuse3.init(ops, str(opts.mountpoint), options)
            unmounted = False
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_write_back, model)
                    nursery.start_soon(place_short_packs, volume)
                    nursery.start_soon(_replay_journal, model)
                    nursery.start_soon(_refresh_loop, model)
                    health: dict = {}
                    nursery.start_soon(_status_loop, home, model, volume, opts.mountpoint, health)
                    nursery.start_soon(_allowance_loop, model, volume)
                    nursery.start_soon(_share_poll, model, home.config().share_poll)
                    config = home.config()
                    nursery.start_soon(_health_loop, model, volume, config.audit_interval, config.repair_margin,
                                       config.repair_grace, health)

                    async def stop_on_signal() -> None:
                        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
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
                with trio.CancelScope(shield=True):
                    try:
                        await model.flush_all()
                    except (PlutoError, OSError) as exc:
                        log.error("could not upload everything before unmounting (%s); "
                                  "it stays in the journal and resumes at the next mount", exc)
                    _write_status(home, model, volume, opts.mountpoint)
                pyfuse3.close(unmount=not unmounted)
    finally:
        journal.close()
        pid_file(home).unlink(missing_ok=True)
