"""Admission of connections to one listening server: who gets a slot, who is dropped.

Two pools, both bounded (`ServerLimits`):

- the **handshake slots**: every accepted TCP connection takes one until its
  Noise handshake is done. One address may hold `handshakes_per_ip` of them;
  when the pool or that share is full, the newcomer still gets a slot and the
  *oldest* handshake of the address holding the most is dropped. Honest
  handshakes finish in milliseconds, so the oldest are the stalled ones.
- the **connections**: an authenticated connection, bounded in total, per
  address and per peer key. When a bound is reached the newcomer is let in
  and the least useful connection of the busiest source is dropped: one that
  never sent a message (oldest first), else the one silent longest.

A flood from one source therefore recycles its own slots and leaves real
clients served. Received bytes of every connection share one
`BufferBudget`. `stats()` is the public figure tests and operators read.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import trio

from transport.protocol.limits import ServerLimits
from transport.protocol.noise_channel import BufferBudget
from transport.protocol.rpc import RpcConnection

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Admission:
    """One accepted connection's place in the gate; `scope` wraps all its work."""

    ip: str
    address: str
    order: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    key: bytes | None = None
    conn: RpcConnection | None = None
    dropped: str = ""

    def usefulness(self) -> tuple[float, int]:
        """Sort key for eviction, least useful first: never-used connections, then the longest silent."""
        last = self.conn.last_active if self.conn is not None else -math.inf
        return (last, self.order)


class Gate:
    """The admission state of one server. Create one per listener (or pass one to `serve_rpc` to inspect it)."""

    def __init__(self, limits: ServerLimits | None = None) -> None:
        self.limits = limits or ServerLimits()
        self.budget = BufferBudget(self.limits.buffered_bytes_max)
        self._order = itertools.count()
        self._handshaking: dict[int, Admission] = {}  # insertion order = age
        self._connected: dict[int, Admission] = {}
        self.dropped_handshakes = 0
        self.dropped_connections = 0

    # ---- the pools ---------------------------------------------------------

    def arrive(self, ip: str, address: str) -> Admission:
        """A TCP connection was accepted: give it a handshake slot, dropping another if the pool is full."""
        adm = Admission(ip, address, next(self._order))
        mine = [a for a in self._handshaking.values() if a.ip == ip]
        if len(mine) >= self.limits.handshakes_per_ip:
            self._drop(mine[0], "handshake dropped: its address holds its whole share of handshake slots")
        elif len(self._handshaking) >= self.limits.handshakes_max:
            self._drop(self._oldest_of_busiest(self._handshaking), "handshake dropped: handshake slots full")
        self._handshaking[adm.order] = adm
        return adm

    def authenticated(self, adm: Admission, conn: RpcConnection) -> None:
        """The handshake of `adm` is done: move it to the connection pool, dropping another if a bound is hit."""
        self._handshaking.pop(adm.order, None)
        adm.key, adm.conn = conn.remote_key, conn
        same_key = [a for a in self._connected.values() if a.key == adm.key]
        same_ip = [a for a in self._connected.values() if a.ip == adm.ip]
        if len(same_key) >= self.limits.connections_per_key:
            self._drop(min(same_key, key=Admission.usefulness), "connection dropped: too many for one peer key")
        elif len(same_ip) >= self.limits.connections_per_ip:
            self._drop(min(same_ip, key=Admission.usefulness), "connection dropped: too many from one address")
        elif len(self._connected) >= self.limits.connections_max:
            busiest = Counter(a.ip for a in self._connected.values()).most_common(1)[0][0]
            victims = [a for a in self._connected.values() if a.ip == busiest]
            self._drop(min(victims, key=Admission.usefulness), "connection dropped: connection slots full")
        self._connected[adm.order] = adm
        conn.channel.share_budget(self.budget, adm.scope.cancel)

    def leave(self, adm: Admission) -> None:
        """`adm` has ended, for whatever reason."""
        self._handshaking.pop(adm.order, None)
        self._connected.pop(adm.order, None)

    def _oldest_of_busiest(self, pool: dict[int, Admission]) -> Admission:
        busiest = Counter(a.ip for a in pool.values()).most_common(1)[0][0]
        return next(a for a in pool.values() if a.ip == busiest)

    def _drop(self, adm: Admission, reason: str) -> None:
        if adm.order in self._handshaking:
            self.dropped_handshakes += 1
        else:
            self.dropped_connections += 1
        self.leave(adm)
        adm.dropped = reason
        adm.scope.cancel()

    # ---- reporting ---------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Current and cumulative figures: slots in use, bytes buffered, what was dropped."""
        return {
            "handshaking": len(self._handshaking),
            "connections": len(self._connected),
            "buffered_bytes": self.budget.total,
            "buffered_peak": self.budget.peak,
            "buffered_limit": self.budget.limit,
            "dropped_handshakes": self.dropped_handshakes,
            "dropped_connections": self.dropped_connections,
            "dropped_for_memory": self.budget.evictions,
        }
