"""Audits, repair and garbage collection of one user's packs.

- Audit: for every fragment column of a pack, challenge the peer for a random
  16 KiB leaf of each segment's fragment and check the Merkle path against the
  fragment id the pack record keeps (no local copy needed). A timeout puts
  the peer in containment: the same challenge is asked again, up to
  CONTAINMENT_RETRIES times, before it counts as a failure. Outcomes go to
  the coordinator, whose reputation scores decide placement.
- Peer states (`peer_state`): healthy (heartbeating), offline (silent for
  less than the repair grace, expected back), lost (silent longer, unknown
  to the coordinator, or disqualified by it). Offline peers are not asked:
  a challenge would only time out.
- Repair (`repair_plan`, rule in docs/TRUST.md): fragments on offline peers
  still count towards a pack's health, so a reboot or a night off does not
  move data; lost ones are rebuilt from any k onto new peers once fewer
  than the threshold (k + repair_margin in the background, n for `pluto
  check --repair`) remain. A pack with fewer than k + 1 fragments reachable
  right now is repaired whatever the grace, offline columns included: one
  more absence would make it unreadable. A column no peer holds (None in
  the record, or a peer already named for an earlier column) is missing:
  always rebuilt. Placement and the rebuild itself are in repair.py; a pack
  counts as repaired only when every planned column was placed, and
  `CheckReport.not_fixed` lists the others. Slots (folders, pack records)
  are re-written to the peers that now rank highest for them.
- GC: packs this user uploaded that no file refers to any more have their
  fragments deleted (the peers give the space back).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from cryptree.caps import ReadCap, WriteCap
from cryptree.dirnode import DirLink
from cryptree.errors import CryptreeError
from cryptree.filenode import FileRef
from cryptree.merkle import leaf_count
from cryptree.packrecord import Locator
from pluto_fs.errors import NotEnoughPeers, PlutoError
from pluto_fs.net.peer_states import PeerState, peer_state, peer_states  # noqa: F401 (re-exported: callers import them from here)
from pluto_fs.store.packs import PackLayout
from pluto_fs.volume.repair import RepairResult, repair_pack
from pluto_fs.volume.tree import child_cap
from pluto_fs.volume.volume import Volume
from transport.errors import RequestTimeout, TransportError

log = logging.getLogger(__name__)

CONTAINMENT_RETRIES = 2


@dataclass
class PackHealth:
    """The state of one pack after an audit."""

    record: ReadCap
    nonce: bytes
    seq: int
    layout: PackLayout
    peers: tuple[bytes | None, ...]
    healthy: list[bool]  # the peer is up and proved it holds the column's fragments
    offline: list[bool] = field(default_factory=list)  # the peer is within the grace: not asked, expected back
    # No peer holds the column: None in the record (no peer acknowledged it), or a peer already
    # named for an earlier column (v1 records may do that: cryptree/packrecord.py). Neither
    # healthy nor offline.
    missing: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.offline:
            self.offline = [False] * len(self.healthy)
        if not self.missing:
            self.missing = [False] * len(self.healthy)

    @property
    def healthy_count(self) -> int:
        """Columns whose peer proved it holds every fragment: what can be read right now."""
        return sum(self.healthy)

    @property
    def offline_count(self) -> int:
        """Columns on peers silent for less than the repair grace."""
        return sum(self.offline)

    @property
    def durable_count(self) -> int:
        """Columns that count towards durability: proven now, or on a peer within the grace."""
        return self.healthy_count + self.offline_count


def repair_plan(health: PackHealth, below: int) -> list[int]:
    """The columns to rebuild for a pack with repair threshold `below` ([] if it should wait).

    - Fewer than k + 1 fragments reachable now: every column not proven
      healthy, offline ones included. One more absence would make the pack
      unreadable, and the peers counted on to come back may never do so.
    - Else fewer than `below` fragments durable (healthy or offline): the
      lost columns only; offline ones are expected back within the grace.
    - Else the missing columns only (no peer holds them, so no grace can
      bring them back); if there are none the pack waits (an offline peer
      that returns costs no traffic).
    """
    n, k = health.layout.n, health.layout.k
    if health.healthy_count < k + 1:
        return [c for c in range(n) if not health.healthy[c]]
    if health.durable_count < below:
        return [c for c in range(n) if not health.healthy[c] and not health.offline[c]]
    return [c for c in range(n) if health.missing[c]]


@dataclass
class CheckReport:
    """What `pluto check` found and did."""

    folders: int = 0
    files: int = 0
    packs: int = 0
    fragments_checked: int = 0
    fragments_failed: int = 0
    fragments_offline: int = 0  # on peers within the repair grace: not asked, still counted
    packs_degraded: int = 0  # fewer than n fragments healthy right now (offline ones included)
    packs_waiting: int = 0  # degraded partly by offline peers whose fragments the grace keeps from repair
    packs_unreadable: int = 0
    packs_short: int = 0  # with a column no peer holds (never placed): rebuilt whatever the grace
    packs_repaired: int = 0  # every planned column placed
    fragments_rebuilt: int = 0
    slots_rewritten: int = 0
    packs_collected: int = 0
    problems: list[str] = field(default_factory=list)
    # Packs a repair could not fully fix: {"pack": id hex, "file": a path using it,
    # "columns": [still not placed], "reason": why}. Non-empty: `pluto check` exits 1.
    not_fixed: list[dict] = field(default_factory=list)


@dataclass
class Inventory:
    """Everything reachable from a root: folder caps and pack locators."""

    folders: list[ReadCap | WriteCap] = field(default_factory=list)
    files: int = 0
    packs: dict[bytes, Locator] = field(default_factory=dict)  # pack record writer -> one locator into it
    used_by: dict[bytes, str] = field(default_factory=dict)  # pack record writer -> path of one file using it


async def inventory(volume: Volume, root: WriteCap | ReadCap) -> Inventory:
    """Walk the tree under `root` and collect every folder and every pack its files use."""
    inv = Inventory()
    stack: list[tuple[WriteCap | ReadCap, str]] = [(root, "")]
    while stack:
        cap, path = stack.pop()
        inv.folders.append(cap)
        directory = await volume.load_dir(cap, missing_ok=cap is root)
        for entry in directory.entries:
            if isinstance(entry.child, DirLink):
                stack.append((child_cap(cap, entry), f"{path}/{entry.name}"))
            elif isinstance(entry.child, FileRef):
                inv.files += 1
                await _collect_file(volume, entry.child, entry.size, inv, f"{path}/{entry.name}")
    return inv


async def _collect_file(volume: Volume, ref: FileRef, size: int, inv: Inventory, path: str) -> None:
    for manifest in await volume.manifest_levels(ref, size):
        for chunk in manifest.chunks:
            loc = Locator.decode(chunk.locator)
            inv.packs.setdefault(loc.record.writer, loc)
            inv.used_by.setdefault(loc.record.writer, path)


class Doctor:
    """Audits and repairs the packs of one volume."""

    def __init__(self, volume: Volume, rng: random.Random | None = None, grace: float = 0.0) -> None:
        """Audit and repair `volume`'s packs; peers silent for less than `grace` seconds count as offline, not lost."""
        self.volume = volume
        self.packs = volume.packs
        self.net = volume.net
        self.rng = rng or random.Random()
        self.grace = grace

    async def audit(self, loc: Locator, report: CheckReport | None = None) -> PackHealth:
        """Challenge every fragment column of a pack once (with containment on timeouts)."""
        seq, layout, peers = await self.packs.fetch_record(loc.record)
        records = await self.net.peers(refresh=True)
        # A peer counts for one column only: a later column naming it again (a v1 record may name a
        # peer twice, for a column it never got) is missing, not challenged, not held against it.
        first: dict[bytes, int] = {}
        for col, pid in enumerate(peers):
            if pid is not None:
                first.setdefault(pid, col)
        missing = [pid is None or first[pid] != col for col, pid in enumerate(peers)]
        states = [None if missing[col] else peer_state(records.get(pid), self.grace) for col, pid in enumerate(peers)]
        healthy = [False] * layout.n
        offline = [state is PeerState.OFFLINE for state in states]

        async def column(col: int) -> None:
            record = None if missing[col] else records.get(peers[col])
            # A disqualified peer that still runs is challenged too: if our own earlier failure
            # report is what holds it, only our passing audit may lift it (docs/TRUST.md).
            recheck = record is not None and record.disqualified and record.alive
            if states[col] is not PeerState.HEALTHY and not recheck:
                return  # missing or silent: a challenge would only time out
            ok = await self._challenge_column(layout, peers[col], col)
            if report is not None:
                report.fragments_checked += len(layout.segments)
                report.fragments_failed += 0 if ok else 1
            await self.packs.report(peers[col], ok)
            if recheck and ok:
                fresh = (await self.net.peers(refresh=True)).get(peers[col])
                ok = fresh is not None and not fresh.disqualified  # others' failures still stand
            healthy[col] = ok

        async with trio.open_nursery() as nursery:
            for col in range(layout.n):
                nursery.start_soon(column, col)
        return PackHealth(loc.record, loc.nonce, seq, layout, peers, healthy, offline, missing)

    async def _challenge_column(self, layout: PackLayout, peer: bytes, col: int) -> bool:
        for index, seg in enumerate(layout.segments):
            length = layout.fragment_length(index)
            leaf = self.rng.randrange(leaf_count(length))
            for attempt in range(CONTAINMENT_RETRIES + 1):
                try:
                    client = await self.net.client(peer)
                    if not await client.challenge(seg.fragment_ids[col], leaf, length):
                        return False  # a wrong proof is a failure at once
                    break
                except (RequestTimeout, trio.TooSlowError):
                    log.info("audit: peer timed out (attempt %d); asking the same challenge again", attempt + 1)
                    continue
                except (TransportError, NotEnoughPeers):
                    return False
            else:
                return False
        return True

    async def repair(self, health: PackHealth, columns: list[int] | None = None) -> RepairResult:
        """Rebuild `columns` (default: every column not proven healthy), each onto a peer of its own.

        Rules in repair.py (and docs/TRUST.md): spares first, else the peer
        that lost the column; never two columns on one peer; the result
        lists every column that could not be placed, and why.
        """
        layout = health.layout
        missing = [c for c in range(layout.n) if not health.healthy[c]] if columns is None else list(columns)
        if not missing:
            return RepairResult()
        return await repair_pack(self.volume, health, missing)

    async def rewrite_slot(self, writer: bytes) -> bool:
        """Re-store the newest version of a slot on the peers that should hold it now (a read does:
        read repair); False if no replica holds it."""
        return await self.volume.slots.repair(writer)

    async def collect_garbage(self, referenced: set[bytes], min_age: float = 0.0) -> int:
        """Delete the fragments of logged packs that nothing refers to; return packs collected."""
        import time

        log_ = self.packs.log
        if log_ is None:
            return 0
        collected = 0
        for writer, _nonce, read_key, created in log_.all():
            if writer in referenced or time.time() - created < min_age:
                continue
            try:
                _, layout, peers = await self.packs.fetch_record(ReadCap("file", writer, read_key))
            except (NotEnoughPeers, CryptreeError):
                log_.remove(writer)  # the record itself is gone: nothing left to free
                continue
            for col, peer in enumerate(peers):
                if peer is None:
                    continue  # never placed: nothing to free
                try:
                    client = await self.net.client(peer)
                    for seg in layout.segments:
                        await client.delete_fragment(seg.fragment_ids[col])
                except (TransportError, NotEnoughPeers) as exc:
                    log.info("gc: could not reach a peer (%s); its space returns when it forgets unclaimed data", exc)
            self.packs.forget_short(writer)
            log_.remove(writer)
            collected += 1
        return collected


def _not_fixed(health: PackHealth, result: RepairResult, path: str) -> dict:
    """One `CheckReport.not_fixed` entry: the pack, a file using it, the columns still missing, why."""
    reasons = list(dict.fromkeys(result.unplaced.values()))  # distinct, in column order
    return {"pack": health.layout.pack_id.hex(), "file": path, "columns": sorted(result.unplaced),
            "placed": result.placed, "reason": "; ".join(reasons)}


async def check(volume: Volume, root: WriteCap | ReadCap, *, repair: bool = False, gc: bool = False,
                gc_min_age: float = 3600.0, progress: Callable[[str], None] | None = None,
                repair_below: int | None = None, sample: int | None = None, grace: float = 0.0) -> CheckReport:
    """Audit everything reachable from `root`; with `repair`, fix what is degraded; with `gc`, free what is unused.

    `repair_below`: repair only packs with fewer durable fragments than this
    (the background repairer uses k + repair_margin; by default anything below n).
    `sample`: audit only this many packs, chosen at random (background rounds).
    `grace`: seconds a silent peer's fragments still count (`repair_plan`);
    0, the default here, repairs anything on a peer that is not heartbeating.
    """
    report = CheckReport()
    inv = await inventory(volume, root)
    report.folders, report.files, report.packs = len(inv.folders), inv.files, len(inv.packs)
    doctor = Doctor(volume, grace=grace)
    chosen = list(inv.packs.values())
    if sample is not None and sample < len(chosen):
        chosen = doctor.rng.sample(chosen, sample)
    for i, loc in enumerate(chosen):
        if progress:
            progress(f"auditing pack {i + 1}/{len(chosen)}")
        try:
            health = await doctor.audit(loc, report)
        except PlutoError as exc:
            report.packs_unreadable += 1
            report.problems.append(str(exc))
            continue
        report.fragments_offline += health.offline_count * len(health.layout.segments)
        if any(health.missing):
            report.packs_short += 1
        if health.healthy_count < health.layout.n:
            report.packs_degraded += 1
            if health.healthy_count < health.layout.k:
                report.packs_unreadable += 1
            below = health.layout.n if repair_below is None else repair_below
            columns = repair_plan(health, below)
            if health.offline_count and not any(health.offline[c] for c in columns):
                report.packs_waiting += 1
            if repair and columns:
                try:
                    result = await doctor.repair(health, columns)
                except (PlutoError, TransportError) as exc:
                    result = RepairResult(unplaced={col: str(exc) for col in columns})
                report.fragments_rebuilt += result.rebuilt
                if not result.complete:
                    report.not_fixed.append(_not_fixed(health, result, inv.used_by.get(loc.record.writer, "")))
                elif result.placed:
                    report.packs_repaired += 1
    if repair and isinstance(root, WriteCap):
        for cap in inv.folders:
            if await doctor.rewrite_slot(cap.writer):
                report.slots_rewritten += 1
        for writer in inv.packs:
            if await doctor.rewrite_slot(writer):
                report.slots_rewritten += 1
    if gc:
        report.packs_collected = await doctor.collect_garbage(set(inv.packs), gc_min_age)
    return report
