"""The peer registry: who offers storage, where, whether it is alive, and how it fares in audits.

Rows are keyed by a peer's Noise static key (its peer id). The registry also
keeps the storage-exchange books (which client owns which peer, and what
each peer reports storing for each client) and answers the questions
clients ask before placing data: which peers to use, where a peer is now,
and how much a client may store.

Which client stores how much on which peer is kept in memory only, as the
peer's latest heartbeat said it (a restart forgets it; every live peer
says it again within one heartbeat interval): it is what the storage
exchange sums and what proves an audit reporter has data on the peer it
reports, and written to disk it would record who keeps data where. Audit
reporters (the rate bound, and whose latest report had failures) are kept
in memory for the same reason. Rules: docs/TRUST.md "Reputation".
"""

from __future__ import annotations

import logging
import math
import secrets
import sqlite3
import time
from typing import Any, cast

from transport.coordinator.limits import CoordinatorLimits
from transport.coordinator.reputation import (
    FAILURES_PER_REPORT_MAX,
    PeerRow,
    PeerView,
    add_audit,
    judge_peer,
    reporter_weight,
)
from transport.errors import RemoteError
from transport.sqlite_db import Database, row_dicts

log = logging.getLogger(__name__)

_PEER_COLUMNS = ", ".join(PeerRow.__annotations__)  # the columns, in the order PeerRow lists them


def _peer_rows(cursor: sqlite3.Cursor) -> list[PeerRow]:
    """Rows selected with _PEER_COLUMNS, typed."""
    return cast(list[PeerRow], row_dicts(cursor))

# ---- the coordinator's own downtime ------------------------------------------

AWAKE_EVERY = 10.0  # seconds between "still running" notes in the counters table
_AWAKE = "awake"  # counters row: the last time (unix seconds) this coordinator was known to run


def mark_awake(conn: sqlite3.Connection) -> None:
    """Note in the counters table that this coordinator is running now."""
    conn.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (_AWAKE, int(time.time())))


def discount_downtime(conn: sqlite3.Connection) -> float:
    """Move every peer's clock fields forward by the time this coordinator was not running.

    Uptime counts heartbeats against the time since a peer was first seen, and
    "offline for" and the forgetting of audit results run on the same clock. A
    coordinator that was stopped (the demo grid between two runs, a host
    reboot) heard no heartbeat from anybody; without this shift every peer
    would come back judged for that silence, fall under the uptime floor and
    get no placements. Times are clamped to now, because the last note may be
    up to AWAKE_EVERY seconds older than the stop.
    """
    now = time.time()
    row = conn.execute("SELECT n FROM counters WHERE name = ?", (_AWAKE,)).fetchone()
    if row is None:  # a database from before these notes: the last heartbeat heard is the best guess
        row = conn.execute("SELECT MAX(last_seen) FROM peers").fetchone()
    shift = max(0.0, now - row[0]) if row is not None and row[0] is not None else 0.0
    if shift > 0:
        conn.execute(
            "UPDATE peers SET first_seen = MIN(first_seen + ?1, ?2), last_seen = MIN(last_seen + ?1, ?2),"
            " last_counted = MIN(last_counted + ?1, ?2),"
            " rep_at = CASE WHEN rep_at > 0 THEN MIN(rep_at + ?1, ?2) ELSE 0 END",
            (shift, now),
        )
    mark_awake(conn)
    return shift


class PeerRegistry:
    """Storage peers, their heartbeats, audits and exchange books, in the coordinator's database.

    `heartbeat_interval` is the longest interval a peer may declare (and the
    default); a peer is alive while its last heartbeat is within
    `limits.alive_intervals` of its own interval.
    """

    def __init__(self, db: Database, limits: CoordinatorLimits, heartbeat_interval: float) -> None:
        self.db = db
        self.limits = limits
        self.heartbeat_interval = float(heartbeat_interval)
        self._rng = secrets.SystemRandom()
        self._audit_last: dict[tuple[bytes, bytes], float] = {}  # (reporter, peer) -> last clean report (monotonic)
        # peer -> reporter -> (weight, monotonic time) of that reporter's latest report, if it had failures
        self._open_failures: dict[bytes, dict[bytes, tuple[float, float]]] = {}
        self._usage: dict[bytes, dict[bytes, int]] = {}  # peer -> client -> raw bytes, as the peer last said
        self._client_used: dict[bytes, int] = {}  # client -> raw bytes on all peers (the sum of _usage)

    def _view(self, row: PeerRow, now: float) -> PeerView:
        return judge_peer(row, now, self.limits, self.open_failures(row["id"], time.monotonic()))

    def open_failures(self, peer: bytes, mono: float) -> float:
        """Summed weight of reporters whose latest report on `peer` had failures, within `open_failure_hold`."""
        hold = self.limits.open_failure_hold
        return sum(w for w, t in self._open_failures.get(peer, {}).values() if mono - t < hold)

    def _set_usage(self, peer: bytes, clients: list[tuple[bytes, int]]) -> None:
        """Replace what `peer` stores per client, keeping the per-client totals in step."""
        for client, amount in self._usage.pop(peer, {}).items():
            left = self._client_used.get(client, 0) - amount
            if left > 0:
                self._client_used[client] = left
            else:
                self._client_used.pop(client, None)
        fresh = {c: b for c, b in clients if b > 0}
        if fresh:
            self._usage[peer] = fresh
        for client, amount in fresh.items():
            self._client_used[client] = self._client_used.get(client, 0) + amount

    def stored_for(self, peer: bytes, client: bytes) -> int:
        """Raw bytes `peer` last reported storing for `client` (0 if none, or not since this process started)."""
        return self._usage.get(peer, {}).get(client, 0)

    # ---- what peers tell us ------------------------------------------------

    async def register(
        self, peer: bytes, address: str, capacity: int, free: int, interval: float, owner: bytes | None
    ) -> None:
        """Register or update `peer` (arguments already validated); refused when the registry is full."""
        now = time.time()
        peers_max = self.limits.peers_max

        def write(conn: sqlite3.Connection) -> None:
            if owner is not None:
                conn.execute("INSERT OR REPLACE INTO owners(peer, owner) VALUES (?, ?)", (peer, owner))
            else:
                conn.execute("DELETE FROM owners WHERE peer = ?", (peer,))
            row = conn.execute("SELECT last_counted FROM peers WHERE id = ?", (peer,)).fetchone()
            if row is None:
                (count,) = conn.execute("SELECT COUNT(*) FROM peers").fetchone()
                if count >= peers_max:
                    raise RemoteError("registry_full", "the coordinator registers no more peers")
                conn.execute(
                    "INSERT INTO peers (id, address, capacity, free, used, heartbeat_interval, first_seen,"
                    " last_seen, heartbeats, last_counted) VALUES (?, ?, ?, ?, 0, ?, ?, ?, 1, ?)",
                    (peer, address, capacity, free, interval, now, now, now),
                )
                return
            counts = now - row[0] >= interval / 2
            conn.execute(
                "UPDATE peers SET address = ?, capacity = ?, free = ?, heartbeat_interval = ?, last_seen = ?,"
                " heartbeats = heartbeats + ?, last_counted = CASE WHEN ? THEN ? ELSE last_counted END"
                " WHERE id = ?",
                (address, capacity, free, interval, now, int(counts), counts, now, peer),
            )

        await self.db.run(write)

    async def heartbeat(self, peer: bytes, free: int, used: int, clients: list[tuple[bytes, int]] | None) -> float:
        """Record that `peer` is alive with `free` and `used` bytes; returns its heartbeat interval.

        `clients`, when given, replaces what the peer stores for each client
        (in memory only, see the module docstring).
        """
        now = time.time()

        def write(conn: sqlite3.Connection) -> float:
            row = conn.execute(
                "SELECT heartbeat_interval, last_counted, capacity FROM peers WHERE id = ?", (peer,)
            ).fetchone()
            if row is None:
                raise RemoteError("not_registered", "register before sending heartbeats")
            interval, last_counted, capacity = row
            if free > capacity:
                raise RemoteError("bad_request", "free space cannot exceed the registered capacity")
            # Heartbeats faster than half the interval do not count, so a peer
            # that was down cannot make up its uptime by bursting.
            counts = now - last_counted >= interval / 2
            conn.execute(
                "UPDATE peers SET free = ?, used = ?, last_seen = ?, heartbeats = heartbeats + ?,"
                " last_counted = CASE WHEN ? THEN ? ELSE last_counted END WHERE id = ?",
                (free, used, now, int(counts), counts, now, peer),
            )
            return float(interval)

        interval = await self.db.run(write)  # raises not_registered before any usage is believed
        if clients is not None:
            self._set_usage(peer, clients)
        return interval

    async def report_audit(self, reporter: bytes, peer: bytes, passed: int, failed: int) -> bool:
        """Count one audit run of `reporter` against `peer`: `passed` and `failed` challenges.

        Returns False when it does not count: `peer` reports storing nothing
        for `reporter` (no proof it has anything there to audit), or it is a
        clean report within `audit_report_interval` of the reporter's last
        counted clean one. Reports with failures are never rate-bounded away:
        every failure of a run counts (up to FAILURES_PER_REPORT_MAX). A report
        with failures opens a failure for this reporter that disqualifies the
        peer (see judge_peer) until a later clean report by the same
        reporter closes it; clean reports from anyone else cannot.
        """
        if reporter == peer:
            raise RemoteError("self_report", "a peer cannot audit itself")
        if passed <= 0 and failed <= 0:
            return False
        now = time.time()
        mono = time.monotonic()
        ok = failed == 0
        weight = reporter_weight(self.stored_for(peer, reporter), self.limits.audit_full_weight_bytes)
        key = (reporter, peer)
        if ok:
            last = self._audit_last.get(key)
            if last is not None and mono - last < self.limits.audit_report_interval:
                return False

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT ok_w, fail_w, rep_at FROM peers WHERE id = ?", (peer,)).fetchone()
            if row is None:
                raise RemoteError("not_found", "no such peer")
            if weight <= 0:
                return False
            ok_w, fail_w = add_audit(row[0], row[1], now - row[2], ok, failed=failed, weight=weight)
            conn.execute(
                "UPDATE peers SET ok_w = ?, fail_w = ?, rep_at = ?, audits_ok = audits_ok + ?,"
                " audits_failed = audits_failed + ? WHERE id = ?",
                (ok_w, fail_w, now, int(ok), 0 if ok else min(failed, FAILURES_PER_REPORT_MAX), peer),
            )
            return True

        if not await self.db.run(write):
            return False
        opened = self._open_failures.setdefault(peer, {})
        if ok:
            self._audit_last[key] = mono
            opened.pop(reporter, None)
        else:
            opened[reporter] = (weight, mono)
        if not opened:
            del self._open_failures[peer]
        return True

    # ---- what clients ask --------------------------------------------------

    async def allowance(self, client: bytes) -> dict[str, int]:
        """Storage exchange: what `client` offers, may store and stores (raw bytes).

        offered = capacity of the client's own peers that are alive and not
        suspended; allowed = offered + a grace for newcomers; used = what
        peers last reported storing for it.
        """
        now = time.time()
        alive_intervals = self.limits.alive_intervals

        def read(conn: sqlite3.Connection) -> int:
            offered = conn.execute(
                "SELECT COALESCE(SUM(p.capacity), 0) FROM owners o JOIN peers p ON p.id = o.peer"
                " WHERE o.owner = ? AND p.suspended = 0 AND p.last_seen >= ? - ? * p.heartbeat_interval",
                (client, now, alive_intervals),
            ).fetchone()[0]
            return int(offered)

        offered = await self.db.run(read)
        used = self._client_used.get(client, 0)
        grace = self.limits.exchange_grace
        return {"offered": offered, "grace": grace, "allowed": offered + grace, "used": used}

    async def _candidate_rows(self, min_free: int, now: float) -> list[PeerRow]:
        alive_intervals = self.limits.alive_intervals

        def read(conn: sqlite3.Connection) -> list[PeerRow]:
            return _peer_rows(
                conn.execute(
                    f"SELECT {_PEER_COLUMNS} FROM peers WHERE free >= ? AND suspended = 0"
                    " AND last_seen >= ? - ? * heartbeat_interval",
                    (min_free, now, alive_intervals),
                )
            )

        return await self.db.run(read)

    async def find_peers(self, n: int, exclude: set[bytes], min_free: int) -> list[dict[str, Any]]:
        """Up to `n` distinct, alive, eligible peers with free space, not in `exclude`.

        Sampled at random, weighted towards reputation and (logarithmically)
        free space: free space is self-reported, so it must not let one peer
        attract every placement. Distinct hosts come first, so n fragments do
        not all land on one machine when others are available.
        """
        now = time.time()
        weighted: list[tuple[float, PeerView]] = []
        for row in await self._candidate_rows(min_free, now):
            if row["id"] in exclude:
                continue
            view = self._view(row, now)
            if not view.eligible:
                continue
            weight = (0.5 + view.reputation) * math.log2(2.0 + row["free"] / 2**20)
            # Efraimidis-Spirakis: sorting by u^(1/w) is weighted sampling without replacement.
            weighted.append((self._rng.random() ** (1.0 / weight), view))
        weighted.sort(key=lambda item: item[0], reverse=True)
        first: list[PeerView] = []
        rest: list[PeerView] = []
        hosts: set[str] = set()
        for _, view in weighted:
            host = view.row["address"].rpartition(":")[0]
            (rest if host in hosts else first).append(view)
            hosts.add(host)
        chosen = (first + rest)[:n]
        return [{"id": v.row["id"], "address": v.row["address"], "free": v.row["free"]} for v in chosen]

    async def lookup_peer(self, peer: bytes) -> dict[str, Any]:
        """{address, alive} of `peer`: where it is now (it re-registers after moving)."""

        def read(conn: sqlite3.Connection) -> list[PeerRow]:
            return _peer_rows(conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers WHERE id = ?", (peer,)))

        rows = await self.db.run(read)
        if not rows:
            raise RemoteError("not_found", "no such peer")
        view = self._view(rows[0], time.time())
        return {"address": view.row["address"], "alive": view.alive}

    async def list_peers(self) -> list[dict[str, Any]]:
        """Every registered peer (most recently seen first, capped) with uptime and reputation.

        `offline_for` is how long (seconds, by this coordinator's clock) a peer
        that is not alive has been silent, 0 for alive ones; clients use it
        for the repair grace period. `disqualified` means suspended or below
        the reputation floor: its fragments should be rebuilt elsewhere.
        `member` says whether the peer counts for where mutable slots live
        (see CoordinatorLimits.membership_grace).
        """
        cap = self.limits.list_peers_max

        def read(conn: sqlite3.Connection) -> list[PeerRow]:
            return _peer_rows(
                conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers ORDER BY last_seen DESC LIMIT ?", (cap,))
            )

        now = time.time()
        out = []
        for row in await self.db.run(read):
            view = self._view(row, now)
            out.append(
                {
                    "id": row["id"],
                    "address": row["address"],
                    "capacity": row["capacity"],
                    "free": row["free"],
                    "used": row["used"],
                    "alive": view.alive,
                    "uptime": view.uptime,
                    "audits_ok": row["audits_ok"],
                    "audits_failed": row["audits_failed"],
                    "reputation": view.reputation,
                    "eligible": view.eligible,
                    "disqualified": view.disqualified,
                    "offline_for": view.offline_for,
                    "member": view.member,
                }
            )
        return out

    # ---- housekeeping ------------------------------------------------------

    def forget_expired(self, mono: float) -> None:
        """Drop audit-rate entries older than the report interval (monotonic time `mono`)."""
        interval = self.limits.audit_report_interval
        for key in [k for k, t in self._audit_last.items() if mono - t >= interval]:
            del self._audit_last[key]
        hold = self.limits.open_failure_hold
        for peer, opened in list(self._open_failures.items()):
            for reporter in [r for r, (_, t) in opened.items() if mono - t >= hold]:
                del opened[reporter]
            if not opened:
                del self._open_failures[peer]

    async def forget_silent_peers(self) -> int:
        """Delete peers silent for longer than `limits.forget_peer_after`; returns how many."""
        cutoff = time.time() - self.limits.forget_peer_after

        def write(conn: sqlite3.Connection) -> list[bytes]:
            gone = [r[0] for r in conn.execute("SELECT id FROM peers WHERE last_seen < ?", (cutoff,))]
            conn.execute("DELETE FROM peers WHERE last_seen < ?", (cutoff,))
            return gone

        gone = await self.db.run(write)
        for peer in gone:
            self._set_usage(peer, [])
            self._open_failures.pop(peer, None)
        return len(gone)
