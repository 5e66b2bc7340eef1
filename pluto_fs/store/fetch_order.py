"""Which peers to ask first for a segment, and when to stop waiting for a slow one.

A peer that is frozen, black-holed or overloaded does not fail: it just never
answers, and every fetch from it waited for the full transport timeout before
the next column was tried (reading 24 MiB with 2 of 5 peers frozen took 40 s).
Two defences, both in the read path (`PackStore.gather`):

- hedging: a fetch that has not answered within `hedge_delay()` (a few times
  the usual fragment fetch time, within bounds) gets the next column asked as
  well; the first k answers win, the rest are cancelled;
- memory: a peer that failed, or was still silent when its segment was done
  without it, is asked after the others for `trouble_ttl` seconds, and a peer
  the coordinator lists as offline is asked last. Among equals, lower columns
  go first (the primaries: decoding them is a copy, not arithmetic).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import trio

FIRST_HEDGE_DELAY = 0.5  # seconds, before any fetch time has been seen


@dataclass
class FetchOrder:
    """Per-volume memory of how peers answered fragment fetches."""

    trouble_ttl: float = 60.0
    min_hedge: float = 0.25
    max_hedge: float = 5.0
    _trouble: dict[bytes, float] = field(default_factory=dict)  # peer -> trio time of its last trouble
    _typical: float | None = None  # moving average of a successful fetch's seconds

    def answered(self, peer: bytes, seconds: float) -> None:
        """`peer` delivered a verified fragment in `seconds`."""
        self._trouble.pop(peer, None)
        self._typical = seconds if self._typical is None else 0.9 * self._typical + 0.1 * seconds

    def troubled(self, peer: bytes) -> None:
        """`peer` failed, or was overtaken by a hedge and never answered."""
        self._trouble[peer] = trio.current_time()

    def in_trouble(self, peer: bytes) -> bool:
        """Whether `peer` had trouble within the last `trouble_ttl` seconds."""
        at = self._trouble.get(peer)
        if at is None:
            return False
        if trio.current_time() - at >= self.trouble_ttl:
            del self._trouble[peer]
            return False
        return True

    def troubled_peers(self) -> list[bytes]:
        """Every peer with trouble within the last `trouble_ttl` seconds (for `pluto status`)."""
        return [peer for peer in list(self._trouble) if self.in_trouble(peer)]

    def order(self, peers: tuple[bytes | None, ...], columns: Iterable[int],
              offline: Collection[bytes] = ()) -> list[int]:
        """`columns` (each with a peer, not None) sorted: untroubled peers, then troubled ones,
        then those listed offline."""

        def rank(col: int) -> int:
            peer = peers[col]
            return 2 if peer in offline else 1 if self.in_trouble(peer) else 0

        return sorted(columns, key=rank)  # stable: lower columns first among equals

    def hedge_delay(self) -> float:
        """Seconds to wait for an outstanding fetch before asking one more column."""
        if self._typical is None:
            return FIRST_HEDGE_DELAY
        return min(self.max_hedge, max(self.min_hedge, 4 * self._typical))
