"""The mount places the fragment columns that no peer acknowledged when a pack was uploaded.

An upload counts a pack as stored once `happy` columns are placed and
records the others as None (pluto_fs/store/pack_io.py): such a pack is *short*.
It is readable, but one column poorer than it should be, and no grace period
can bring that column back, since no peer ever had it. So a short pack is
completed at once, independent of the audit interval and of the repair
grace: right after its upload, then again after 2, 4, 8 ... seconds, at most
60 s apart, until every column has a peer (docs/DATA_PATH.md, "When a write
counts as stored").

Each try reads the newest record, rebuilds the missing columns from k placed
ones (every fragment verified on the way) and places each on a peer of its
own (`repair.repair_pack`). Short packs are kept in the pack log, so a mount
started after a crash picks up what the last one left.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field

import trio

from cryptree.caps import ReadCap
from pluto_fs.errors import NotEnoughPeers, PlutoError
from pluto_fs.volume.health import PackHealth
from pluto_fs.volume.repair import repair_pack
from pluto_fs.volume.volume import Volume
from transport.errors import TransportError

log = logging.getLogger(__name__)

RETRY_FIRST = 2.0  # seconds before the second try of a short pack
RETRY_MAX = 60.0  # the longest wait between tries


@dataclass
class RetrySchedule:
    """When to try each short pack next: at once when it shows up, then after 2, 4, 8 ... s, at most 60 s apart."""

    first: float = RETRY_FIRST
    most: float = RETRY_MAX
    _due: dict[bytes, float] = field(default_factory=dict)  # pack -> time of its next try
    _delay: dict[bytes, float] = field(default_factory=dict)  # pack -> wait after its next failure

    def track(self, packs: Collection[bytes], now: float) -> None:
        """Follow exactly `packs`: new ones are due `now`, those no longer short are dropped."""
        for key in list(self._due):
            if key not in packs:
                del self._due[key], self._delay[key]
        for key in packs:
            if key not in self._due:
                self._due[key], self._delay[key] = now, self.first

    def due(self, now: float) -> list[bytes]:
        """Packs whose next try is at or before `now`."""
        return [key for key, at in self._due.items() if at <= now]

    def failed(self, key: bytes, now: float) -> None:
        """A try of `key` left it short: the next one waits twice as long as the last (within `most`)."""
        self._due[key] = now + self._delay[key]
        self._delay[key] = min(self._delay[key] * 2, self.most)

    def next_try(self) -> float:
        """The time of the earliest try scheduled (inf when nothing is short)."""
        return min(self._due.values(), default=math.inf)

    def all_due(self, now: float) -> None:
        """Try every pack at once (a peer came back: the backoff was waiting for exactly that)."""
        for key in self._due:
            self._due[key], self._delay[key] = now, self.first


PEERS_LOOK_EVERY = 5.0  # seconds between looks at which peers are alive (one that returns ends the backoff)


async def place_short_packs(volume: Volume) -> None:
    """Forever: complete every short pack of `volume` (new ones at once, failing ones with backoff,
    all of them again as soon as a peer comes back)."""
    packs = volume.packs
    schedule = RetrySchedule()
    alive: set[bytes] = set()
    while True:
        short = packs.short_packs()
        schedule.track(short, trio.current_time())
        if short:
            try:
                now_alive = {pid for pid, r in (await volume.net.peers()).items() if r.alive}
            except PlutoError:
                now_alive = alive
            if now_alive - alive:
                schedule.all_due(trio.current_time())
            alive = now_alive
        due = schedule.due(trio.current_time())
        for writer in due:
            nonce, read_key = short[writer]
            await complete_short_pack(volume, writer, nonce, read_key)
            if writer in packs.short_packs():
                schedule.failed(writer, trio.current_time())
        if due:
            continue  # look again at once: packs may have come or gone meanwhile
        wait = min(schedule.next_try() - trio.current_time(), PEERS_LOOK_EVERY if short else math.inf)
        with trio.move_on_after(max(0.0, wait)):
            await packs.wait_short_added()


async def complete_short_packs_once(volume: Volume) -> None:
    """One try at every short pack (the mount's last act before it unmounts)."""
    for writer, (nonce, read_key) in sorted(volume.packs.short_packs().items()):
        await complete_short_pack(volume, writer, nonce, read_key)


async def complete_short_pack(volume: Volume, writer: bytes, nonce: bytes, read_key: bytes) -> bool:
    """One try at placing every missing column of a short pack; True when none is missing any more."""
    packs = volume.packs
    if packs.log is not None and not packs.log.has(writer):
        packs.forget_short(writer)  # garbage collected meanwhile: nothing to complete
        return True
    cap = ReadCap("file", writer, read_key)
    try:
        seq, layout, peers = await packs.fetch_record(cap)
    except NotEnoughPeers as exc:
        log.debug("a pack with a missing fragment column: record unreadable for now (%s); trying again", exc)
        return False
    missing = [col for col, peer in enumerate(peers) if peer is None]
    if not missing:
        packs.forget_short(writer)  # completed by another repair (a `pluto check --repair`)
        return True
    # The placed columns were acknowledged by their peers at upload; every fragment the
    # rebuild reads from them is verified against its id.
    placed = [peer is not None for peer in peers]
    health = PackHealth(cap, nonce, seq, layout, peers, placed, missing=[not p for p in placed])
    try:
        result = await repair_pack(volume, health, missing)
    except (NotEnoughPeers, PlutoError, TransportError) as exc:
        log.debug("a pack's missing fragment column is not placed yet (%s); trying again", exc)
        return False
    except ValueError:  # a malformed record or layout: say so loudly, but keep the mount serving
        log.warning("placing a pack's missing fragment column failed; trying again", exc_info=True)
        return False
    if not result.complete:
        # debug: with a peer away every new pack is short, and each is tried again with backoff;
        # `pluto status` counts them (packs_short)
        log.debug("%d fragment column(s) of a pack not placed yet (%s); trying again",
                 len(result.unplaced), "; ".join(sorted(set(result.unplaced.values()))))
        return False
    log.info("placed %d missing fragment column(s) of a pack", len(result.placed))
    return True
