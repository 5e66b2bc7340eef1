"""The coordinator: rendezvous for peers, username directory, blind mailboxes.

What it holds (SQLite at DATA/coordinator.sqlite, survives restarts):

- a registry of storage peers keyed by their Noise static key (address,
  offered capacity, free/used space, heartbeats, audit outcomes);
- a username -> Ed25519 public key directory, first come first served;
- opaque mailbox blobs (sealed follow requests) keyed by the recipient's
  Ed25519 key, with nothing about who deposited them.

What it deliberately never stores: who deposited a blob (neither transport
key nor address nor time), which client reported which audit, which client
stores data on which peer. See docs/COORDINATOR.md.

Every argument is validated with transport.protocol.args; every refusal is a
RemoteError with a short code.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import sqlite3
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from transport.errors import RemoteError
from transport.protocol.args import get_bool, get_bytes, get_int, get_list, get_str
from transport.protocol.dial import parse_address
from transport.protocol.keys import load_or_create_key
from transport.protocol.peer_id import KEY_SIZE, peer_id_text
from transport.protocol.rpc import CallContext
from transport.protocol.server import RpcService, serve_rpc
from transport.sqlite_db import Database, row_dicts

log = logging.getLogger(__name__)

DB_NAME = "coordinator.sqlite"
KEY_NAME = "coordinator.key"

USERNAME_RE = re.compile(r"[a-z0-9_-]{1,32}")
USERNAME_CONTEXT = b"pluto/username/v1\x00"
MAILBOX_CONTEXT = b"pluto/mailbox/v1\x00"
SIGNATURE_SIZE = 64
NONCE_SIZE = 32
ADDRESS_MAX = 300
CARD_MAX = 300


# ---- signed messages (shared with coordinator_client) ----------------------


def is_valid_username(name: object) -> bool:
    """True if `name` is 1-32 characters of a-z, 0-9, '_' and '-'."""
    return isinstance(name, str) and USERNAME_RE.fullmatch(name) is not None


def username_claim_message(username: str, public_key: bytes, timestamp: int) -> bytes:
    """The bytes an Ed25519 key signs to claim `username` at `timestamp` (unix seconds)."""
    return USERNAME_CONTEXT + username.encode("utf-8") + b"\x00" + public_key + timestamp.to_bytes(8, "big")


def mailbox_message(action: str, mailbox: bytes, nonce: bytes) -> bytes:
    """The bytes the mailbox key signs to `fetch` or `delete` with a challenge nonce."""
    if action not in ("fetch", "delete"):
        raise ValueError(f"unknown mailbox action {action!r}")
    return MAILBOX_CONTEXT + action.encode() + b"\x00" + mailbox + nonce


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        # libsodium also refuses small-order keys here, so a degenerate key
        # cannot "sign" for everyone.
        return False
    return True


# ---- reputation and uptime (pure; the trust work may replace them) -----------

REPUTATION_HALF_LIFE = 7 * 86400.0  # old audit outcomes fade: a week-old failure weighs half


def decay_audit_weights(ok_w: float, fail_w: float, elapsed: float, half_life: float = REPUTATION_HALF_LIFE) -> tuple[float, float]:
    """Audit weights after `elapsed` seconds of forgetting."""
    factor = 0.5 ** (max(0.0, elapsed) / half_life)
    return ok_w * factor, fail_w * factor


FAILURE_WEIGHT = 4.0  # a failed proof is evidence of loss or cheating; a pass only of luck so far


def reputation_score(ok_w: float, fail_w: float) -> float:
    """Exponentially weighted ok-ratio with a uniform prior: 0.5 with no evidence.

    The +1/+2 prior keeps a peer with one lucky (or unlucky) audit away from
    the extremes, and forgetting pulls every score back towards 0.5, so both
    old failures and old successes stop counting. Failures weigh
    FAILURE_WEIGHT times a success: a peer that lost half its fragments
    scores about 1/(1+FAILURE_WEIGHT) and drops below the placement floor
    within a few audits, instead of hovering at 0.5.
    """
    return (ok_w + 1.0) / (ok_w + FAILURE_WEIGHT * fail_w + 2.0)


def add_audit(ok_w: float, fail_w: float, elapsed: float, ok: bool, half_life: float = REPUTATION_HALF_LIFE) -> tuple[float, float]:
    """Weights after forgetting for `elapsed` seconds and then counting one outcome."""
    ok_w, fail_w = decay_audit_weights(ok_w, fail_w, elapsed, half_life)
    return (ok_w + 1.0, fail_w) if ok else (ok_w, fail_w + 1.0)


def uptime_fraction(heartbeats: int, first_seen: float, interval: float, now: float) -> float:
    """Fraction of expected heartbeats received since first seen, in [0, 1]."""
    expected = max(1.0, (now - first_seen) / interval)
    return min(1.0, heartbeats / expected)


# ---- limits ----------------------------------------------------------------


@dataclass(frozen=True)
class CoordinatorLimits:
    """Every bound a stranger could push against, in one place."""

    min_heartbeat_interval: float = 0.1  # shorter would only make peers look dead
    alive_intervals: float = 3.0  # alive = last heartbeat within this many intervals
    peers_max: int = 100_000
    forget_peer_after: float = 30 * 86400.0  # a peer silent this long is dropped from the registry
    users_max: int = 1_000_000
    claim_skew: int = 600  # seconds a claim's timestamp may differ from our clock
    mailbox_blobs_max: int = 256
    mailbox_blob_size: int = 1024
    mailbox_rate: int = 30  # deposits per mailbox per window
    mailbox_rate_window: float = 60.0
    mailbox_total_max: int = 1_000_000  # all mailboxes together: ~1 GiB of blobs at most
    challenge_ttl: float = 60.0
    audit_report_interval: float = 10.0  # per reporter per peer
    find_peers_max: int = 256
    exclude_max: int = 1024
    list_peers_max: int = 10_000  # keeps the answer far below the RPC message limit
    reputation_floor: float = 0.25  # below this (with enough audits) a peer is not offered
    reputation_min_audits: int = 3
    uptime_floor: float = 0.5
    # A peer silent longer than this leaves the network's membership: mutable slots (folders,
    # pack records) stop counting on it and move to the next peers in their ranking. Every client
    # takes membership from here, so all of a user's devices agree on where a slot lives.
    membership_grace: float = 72 * 3600.0
    uptime_grace_heartbeats: float = 100.0  # judge uptime only after this many expected heartbeats
    maintenance_every: float = 60.0
    exchange_grace: int = 1 << 30  # raw bytes a client may store before offering any space itself
    usage_report_max: int = 10_000  # clients one heartbeat may report usage for


# ---- storage ---------------------------------------------------------------

SCHEMA = """
PRAGMA secure_delete = ON;  -- fetched-and-deleted mailbox blobs must not linger in free pages
CREATE TABLE IF NOT EXISTS peers (
    id BLOB PRIMARY KEY,              -- the peer's Noise static key
    address TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    free INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    heartbeat_interval REAL NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    heartbeats INTEGER NOT NULL DEFAULT 0,
    last_counted REAL NOT NULL,       -- time of the last heartbeat that counted for uptime
    suspended INTEGER NOT NULL DEFAULT 0,  -- set by an operator; no RPC changes it
    audits_ok INTEGER NOT NULL DEFAULT 0,
    audits_failed INTEGER NOT NULL DEFAULT 0,
    ok_w REAL NOT NULL DEFAULT 0,
    fail_w REAL NOT NULL DEFAULT 0,
    rep_at REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (     -- storage exchange: whose allowance a peer's capacity raises
    peer BLOB PRIMARY KEY,
    owner BLOB NOT NULL                -- the owning client's device key
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS owners_owner ON owners(owner);
CREATE TABLE IF NOT EXISTS usage (      -- raw bytes each client stores on each peer, as the peer reports
    peer BLOB NOT NULL,
    client BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (peer, client)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_client ON usage(client);
CREATE TABLE IF NOT EXISTS cards (      -- a user's self-signed contact card (identity + box key)
    username TEXT PRIMARY KEY,
    card BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    claimed_at INTEGER NOT NULL
) WITHOUT ROWID;
-- No column says who deposited a blob or when: the coordinator must not learn it.
CREATE TABLE IF NOT EXISTS mail (
    seq INTEGER PRIMARY KEY,          -- delivery order only
    mailbox BLOB NOT NULL,
    id INTEGER NOT NULL,              -- random, so ids reveal nothing about other mailboxes
    blob BLOB NOT NULL,
    UNIQUE (mailbox, id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO counters VALUES ('mail', (SELECT COUNT(*) FROM mail));
CREATE TRIGGER IF NOT EXISTS mail_count_ins AFTER INSERT ON mail
    BEGIN UPDATE counters SET n = n + 1 WHERE name = 'mail'; END;
CREATE TRIGGER IF NOT EXISTS mail_count_del AFTER DELETE ON mail
    BEGIN UPDATE counters SET n = n - 1 WHERE name = 'mail'; END;
PRAGMA user_version = 1;
"""

_PEER_COLUMNS = (
    "id, address, capacity, free, used, heartbeat_interval, first_seen, last_seen, heartbeats,"
    " suspended, audits_ok, audits_failed, ok_w, fail_w, rep_at"
)


# ---- the coordinator's own downtime ------------------------------------------

AWAKE_EVERY = 10.0  # seconds between "still running" notes in the counters table
_AWAKE = "awake"  # counters row: the last time (unix seconds) this coordinator was known to run


def _mark_awake(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (_AWAKE, int(time.time())))


def _discount_downtime(conn: sqlite3.Connection) -> float:
    """Move every peer's clock fields forward by the time this coordinator was not running.

    Uptime counts heartbeats against the time since a peer was first seen, and
    "offline for" and the forgetting of audit results run on the same clock. A
    coordinator that was stopped (the demo grid between two runs, a host
    reboot) heard no heartbeat from anybody, and without this every peer
    came back judged for it: the demo's peers fell under the uptime floor and
    got no placements after a day off. Times are clamped to now, because the
    last note may be up to AWAKE_EVERY seconds older than the stop.
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
    _mark_awake(conn)
    return shift


# ---- argument helpers specific to the coordinator ---------------------------


def _bad(message: str) -> RemoteError:
    return RemoteError("bad_request", message)


def _get_usage(args: dict, max_items: int) -> list[tuple[bytes, int]] | None:
    """Optional per-client usage report: [[client key (32 bytes), bytes], ...]."""
    raw = args.get("clients")
    if raw is None:
        return None
    items = get_list(args, "clients", max_len=max_items)
    out = []
    for item in items:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes) or len(item[0]) != 32
                or type(item[1]) is not int or not 0 <= item[1] < 2**62):
            raise _bad("clients must be a list of [32-byte key, bytes] pairs")
        out.append((item[0], item[1]))
    return out


def _get_seconds(args: dict, name: str, *, low: float, high: float, default: float) -> float:
    """A positive finite number of seconds, capped to `high` (args.py has no float validator)."""
    value: Any = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"argument {name!r} must be a number of seconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"argument {name!r} must be finite")
    if value < low:
        raise _bad(f"argument {name!r} must be at least {low:g}")
    return high if value > high else float(value)  # compared before float() so huge ints cannot overflow


def _get_key_list(args: dict, name: str, *, max_len: int) -> list[bytes]:
    items = get_list(args, name, max_len=max_len, default=[])
    for item in items:
        if not isinstance(item, bytes) or len(item) != KEY_SIZE:
            raise _bad(f"every item of {name!r} must be {KEY_SIZE} bytes")
    return items


def _get_username(args: dict) -> str:
    name = get_str(args, "username", max_len=32)
    if not is_valid_username(name):
        raise _bad("username must be 1-32 characters of a-z, 0-9, '_' and '-'")
    return name


def _observed_host(remote_address: str) -> str:
    host = remote_address.rpartition(":")[0]
    return host.strip("[]")


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _get_address(args: dict, ctx: CallContext) -> str:
    """The address a peer is reachable at, normalised; a wildcard host means 'where you see me'."""
    text = get_str(args, "address", max_len=ADDRESS_MAX)
    # parse_address accepts non-ASCII digits and any host text; clients will
    # dial this string, so only plain printable ASCII is allowed.
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise _bad("address must be printable ASCII without spaces")
    try:
        host, port = parse_address(text)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    if host in ("0.0.0.0", "::"):
        host = _observed_host(ctx.remote_address)
        if not host or host == "?":
            raise _bad("cannot infer your host; register a concrete address")
    return _format_address(host, port)


# ---- the service -----------------------------------------------------------


@dataclass
class _PeerView:
    """A peer row with its derived, time-dependent values."""

    row: dict[str, Any]
    alive: bool
    uptime: float
    reputation: float
    eligible: bool
    disqualified: bool  # suspended, or failed too many audits: its data should be moved away
    offline_for: float  # seconds since its last heartbeat if not alive, else 0
    member: bool  # counts for where mutable slots live: not disqualified, not silent past membership_grace


@dataclass
class _MemoryState:
    """Abuse bounds that need not survive a restart (and must not be persisted)."""

    deposits: dict[bytes, deque[float]] = field(default_factory=dict)  # mailbox -> recent deposit times
    used_nonces: dict[bytes, float] = field(default_factory=dict)  # nonce -> expiry
    audit_last: dict[tuple[bytes, bytes], float] = field(default_factory=dict)  # (reporter, peer) -> time


class Coordinator(RpcService):
    """RPC service of the coordinator; state in one SQLite file.

    `heartbeat_interval` is the longest interval a peer may declare (and the
    default); a peer is alive while its last heartbeat is within
    `limits.alive_intervals` of its own interval.
    """

    def __init__(
        self,
        db: Database,
        public_key: bytes,
        *,
        heartbeat_interval: float = 30.0,
        limits: CoordinatorLimits | None = None,
    ) -> None:
        """Serve from an open Database (schema applied) under the given identity."""
        self.db = db
        self.public_key = public_key
        self.heartbeat_interval = float(heartbeat_interval)
        self.limits = limits or CoordinatorLimits()
        self._mem = _MemoryState()
        # Challenges are stateless MACs under a per-process secret, so nobody
        # can evict another user's challenge by requesting many; a restart
        # merely invalidates outstanding ones.
        self._challenge_secret = secrets.token_bytes(32)
        self._rng = secrets.SystemRandom()

    @classmethod
    def open(cls, data_dir: Path, public_key: bytes, **kwargs: Any) -> Coordinator:
        """Open (creating if needed) DATA/coordinator.sqlite and return a Coordinator on it."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        coordinator = cls(Database(data_dir / DB_NAME, SCHEMA), public_key, **kwargs)
        shift = coordinator.db.run_sync(_discount_downtime)
        if shift > 0:
            log.info("was down for %.0f s: peers are not judged for that time", shift)
        return coordinator

    def close(self) -> None:
        """Close the database; call only when no request is running."""
        self.db.close()

    # ---- derived peer values ----------------------------------------------

    def _view(self, row: dict[str, Any], now: float) -> _PeerView:
        lim = self.limits
        interval = row["heartbeat_interval"]
        alive = now - row["last_seen"] <= lim.alive_intervals * interval
        uptime = uptime_fraction(row["heartbeats"], row["first_seen"], interval, now)
        ok_w, fail_w = decay_audit_weights(row["ok_w"], row["fail_w"], now - row["rep_at"])
        reputation = reputation_score(ok_w, fail_w)
        audits = row["audits_ok"] + row["audits_failed"]
        judged_uptime = (now - row["first_seen"]) / interval >= lim.uptime_grace_heartbeats
        # Low uptime only stops new placements: a flaky peer still holds what it has,
        # whereas a suspended or cheating one cannot be trusted with it.
        disqualified = bool(row["suspended"]) or (audits >= lim.reputation_min_audits and reputation < lim.reputation_floor)
        eligible = alive and not disqualified and not (judged_uptime and uptime < lim.uptime_floor)
        # Computed here rather than sending last_seen, so client clock skew cannot
        # make a peer look lost (or fresh); clamped in case our clock stepped back.
        offline_for = 0.0 if alive else max(0.0, now - row["last_seen"])
        member = not disqualified and offline_for < lim.membership_grace
        return _PeerView(row, alive, uptime, reputation, eligible, disqualified, offline_for, member)

    # ---- peers -------------------------------------------------------------

    async def rpc_ping(self, ctx: CallContext, args: dict) -> dict:
        """{} -> {peer_id}: the coordinator's own peer id, so clients can pin it."""
        return {"peer_id": peer_id_text(self.public_key)}

    async def rpc_register(self, ctx: CallContext, args: dict) -> dict:
        """Register or update the caller as a storage peer; the id is its Noise key."""
        address = _get_address(args, ctx)
        capacity = get_int(args, "capacity")
        free = get_int(args, "free")
        if free > capacity:
            raise _bad("free space cannot exceed capacity")
        interval = _get_seconds(
            args,
            "heartbeat_interval",
            low=self.limits.min_heartbeat_interval,
            high=self.heartbeat_interval,
            default=self.heartbeat_interval,
        )
        peer = ctx.remote_key
        now = time.time()
        peers_max = self.limits.peers_max
        owner = get_bytes(args, "owner", size=32) if args.get("owner") is not None else None

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
        return {"peer_id": ctx.remote_id, "address": address, "heartbeat_interval": interval}

    async def rpc_heartbeat(self, ctx: CallContext, args: dict) -> dict:
        """Record that the caller is alive with `free` and `used` bytes."""
        free = get_int(args, "free")
        used = get_int(args, "used")
        clients = _get_usage(args, self.limits.usage_report_max)
        peer = ctx.remote_key
        now = time.time()

        def write(conn: sqlite3.Connection) -> float:
            if clients is not None:
                conn.execute("DELETE FROM usage WHERE peer = ?", (peer,))
                conn.executemany("INSERT OR REPLACE INTO usage(peer, client, bytes) VALUES (?, ?, ?)",
                                 [(peer, c, b) for c, b in clients])
            row = conn.execute(
                "SELECT heartbeat_interval, last_counted, capacity FROM peers WHERE id = ?", (peer,)
            ).fetchone()
            if row is None:
                raise RemoteError("not_registered", "register before sending heartbeats")
            interval, last_counted, capacity = row
            if free > capacity:
                raise _bad("free space cannot exceed the registered capacity")
            # Heartbeats faster than half the interval do not count, so a peer
            # that was down cannot make up its uptime by bursting.
            counts = now - last_counted >= interval / 2
            conn.execute(
                "UPDATE peers SET free = ?, used = ?, last_seen = ?, heartbeats = heartbeats + ?,"
                " last_counted = CASE WHEN ? THEN ? ELSE last_counted END WHERE id = ?",
                (free, used, now, int(counts), counts, now, peer),
            )
            return interval

        interval = await self.db.run(write)
        return {"heartbeat_interval": interval}

    async def rpc_allowance(self, ctx: CallContext, args: dict) -> dict:
        """Storage exchange: what `client` (default: the caller) offers, may store and stores (raw bytes).

        offered = capacity of the client's own peers that are alive and not
        suspended; allowed = offered + a grace for newcomers; used = what
        peers last reported storing for it.
        """
        client = get_bytes(args, "client", size=32) if args.get("client") is not None else ctx.remote_key
        now = time.time()
        alive_intervals = self.limits.alive_intervals

        def read(conn: sqlite3.Connection) -> tuple[int, int]:
            offered = conn.execute(
                "SELECT COALESCE(SUM(p.capacity), 0) FROM owners o JOIN peers p ON p.id = o.peer"
                " WHERE o.owner = ? AND p.suspended = 0 AND p.last_seen >= ? - ? * p.heartbeat_interval",
                (client, now, alive_intervals),
            ).fetchone()[0]
            used = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM usage WHERE client = ?", (client,)).fetchone()[0]
            return offered, used

        offered, used = await self.db.run(read)
        grace = self.limits.exchange_grace
        return {"offered": offered, "grace": grace, "allowed": offered + grace, "used": used}

    async def _candidate_rows(self, min_free: int, now: float) -> list[dict[str, Any]]:
        alive_intervals = self.limits.alive_intervals

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return row_dicts(
                conn.execute(
                    f"SELECT {_PEER_COLUMNS} FROM peers WHERE free >= ? AND suspended = 0"
                    " AND last_seen >= ? - ? * heartbeat_interval",
                    (min_free, now, alive_intervals),
                )
            )

        return await self.db.run(read)

    async def rpc_find_peers(self, ctx: CallContext, args: dict) -> list[dict]:
        """Up to `n` distinct, alive, eligible peers with free space, not in `exclude`.

        Sampled at random, weighted towards reputation and (logarithmically)
        free space: free space is self-reported, so it must not let one peer
        attract every placement. Distinct hosts come first, so n fragments do
        not all land on one machine when others are available.
        """
        n = get_int(args, "n", low=1, high=self.limits.find_peers_max)
        exclude = set(_get_key_list(args, "exclude", max_len=self.limits.exclude_max))
        min_free = get_int(args, "min_free", low=1, default=1)
        exclude.add(ctx.remote_key)
        now = time.time()
        weighted: list[tuple[float, _PeerView]] = []
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
        first: list[_PeerView] = []
        rest: list[_PeerView] = []
        hosts: set[str] = set()
        for _, view in weighted:
            host = view.row["address"].rpartition(":")[0]
            (rest if host in hosts else first).append(view)
            hosts.add(host)
        chosen = (first + rest)[:n]
        return [{"id": v.row["id"], "address": v.row["address"], "free": v.row["free"]} for v in chosen]

    async def rpc_lookup_peer(self, ctx: CallContext, args: dict) -> dict:
        """{id} -> {address, alive}: where a peer is now (it re-registers after moving)."""
        peer = get_bytes(args, "id", size=KEY_SIZE)

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return row_dicts(conn.execute(f"SELECT {_PEER_COLUMNS} FROM peers WHERE id = ?", (peer,)))

        rows = await self.db.run(read)
        if not rows:
            raise RemoteError("not_found", "no such peer")
        view = self._view(rows[0], time.time())
        return {"address": view.row["address"], "alive": view.alive}

    async def rpc_list_peers(self, ctx: CallContext, args: dict) -> list[dict]:
        """Every registered peer (most recently seen first, capped) with uptime and reputation.

        `offline_for` is how long (seconds, by this coordinator's clock) a peer
        that is not alive has been silent, 0 for alive ones; clients use it
        for the repair grace period. `disqualified` means suspended or below
        the reputation floor: its fragments should be rebuilt elsewhere.
        `member` says whether the peer counts for where mutable slots live
        (see CoordinatorLimits.membership_grace).
        """
        cap = self.limits.list_peers_max

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return row_dicts(
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

    async def rpc_report_audit(self, ctx: CallContext, args: dict) -> dict:
        """Count one audit outcome against `peer` (at most one per reporter per peer per interval).

        The reporter is used only in memory for that bound: persisting it
        would record which client keeps data on which peer.
        """
        peer = get_bytes(args, "peer", size=KEY_SIZE)
        ok = get_bool(args, "ok")
        reporter = ctx.remote_key
        if reporter == peer:
            raise RemoteError("self_report", "a peer cannot audit itself")
        now = time.time()
        mono = time.monotonic()
        key = (reporter, peer)
        last = self._mem.audit_last.get(key)
        if last is not None and mono - last < self.limits.audit_report_interval:
            return {"counted": False}

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT ok_w, fail_w, rep_at FROM peers WHERE id = ?", (peer,)).fetchone()
            if row is None:
                return False
            ok_w, fail_w = add_audit(row[0], row[1], now - row[2], ok)
            conn.execute(
                "UPDATE peers SET ok_w = ?, fail_w = ?, rep_at = ?, audits_ok = audits_ok + ?,"
                " audits_failed = audits_failed + ? WHERE id = ?",
                (ok_w, fail_w, now, int(ok), int(not ok), peer),
            )
            return True

        if not await self.db.run(write):
            raise RemoteError("not_found", "no such peer")
        self._mem.audit_last[key] = mono
        return {"counted": True}

    # ---- usernames ---------------------------------------------------------

    async def rpc_claim_username(self, ctx: CallContext, args: dict) -> dict:
        """Bind `username` to an Ed25519 key, first come first served; re-claiming is idempotent."""
        username = _get_username(args)
        public_key = get_bytes(args, "public_key", size=KEY_SIZE)
        timestamp = get_int(args, "timestamp")
        signature = get_bytes(args, "signature", size=SIGNATURE_SIZE)
        now = int(time.time())
        if abs(timestamp - now) > self.limits.claim_skew:
            raise RemoteError("stale_timestamp", f"timestamp must be within {self.limits.claim_skew} s of now")
        if not verify_ed25519(public_key, username_claim_message(username, public_key, timestamp), signature):
            raise RemoteError("bad_signature", "the claim is not signed by that key")
        users_max = self.limits.users_max

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT public_key FROM users WHERE username = ?", (username,)).fetchone()
            if row is not None:
                if row[0] != public_key:
                    raise RemoteError("taken", f"username {username!r} belongs to another key")
                return
            (count,) = conn.execute("SELECT COUNT(*) FROM users").fetchone()
            if count >= users_max:
                raise RemoteError("registry_full", "the coordinator registers no more usernames")
            conn.execute("INSERT INTO users VALUES (?, ?, ?)", (username, public_key, now))

        await self.db.run(write)
        return {"username": username}

    async def rpc_lookup_user(self, ctx: CallContext, args: dict) -> dict:
        """{username} -> {public_key}, or not_found."""
        username = _get_username(args)

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT public_key FROM users WHERE username = ?", (username,)).fetchone()
            return None if row is None else row[0]

        key = await self.db.run(read)
        if key is None:
            raise RemoteError("not_found", "no such username")
        return {"public_key": key}

    async def rpc_put_card(self, ctx: CallContext, args: dict) -> dict:
        """{username, card}: publish the signed contact card of a claimed username.

        The card is signed by the username's own key (checked here and again by
        every reader), so the coordinator cannot swap in a box key of its own.
        """
        from cryptree.errors import CryptreeError
        from cryptree.follow import open_card

        username = _get_username(args)
        blob = get_bytes(args, "card", max_size=CARD_MAX)
        try:
            contact = open_card(blob)
        except CryptreeError as exc:
            raise RemoteError("bad_signature", f"card does not verify: {exc}") from None
        if contact.username != username:
            raise _bad("the card names another user")

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT public_key FROM users WHERE username = ?", (username,)).fetchone()
            if row is None or bytes(row[0]) != contact.user_id:
                raise RemoteError("not_found", "claim the username with this key before publishing its card")
            conn.execute("INSERT OR REPLACE INTO cards(username, card) VALUES (?, ?)", (username, blob))

        await self.db.run(write)
        return {"stored": True}

    async def rpc_get_card(self, ctx: CallContext, args: dict) -> dict:
        """{username} -> {card}, or not_found."""
        username = _get_username(args)

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT card FROM cards WHERE username = ?", (username,)).fetchone()
            return None if row is None else bytes(row[0])

        card = await self.db.run(read)
        if card is None:
            raise RemoteError("not_found", "no card for that username; ask them to run `pluto register`")
        return {"card": card}

    # ---- mailboxes ---------------------------------------------------------

    def _take_deposit_slot(self, mailbox: bytes) -> None:
        lim = self.limits
        mono = time.monotonic()
        window = self._mem.deposits.setdefault(mailbox, deque())
        while window and mono - window[0] >= lim.mailbox_rate_window:
            window.popleft()
        if len(window) >= lim.mailbox_rate:
            raise RemoteError("rate_limited", f"at most {lim.mailbox_rate} deposits per mailbox per {lim.mailbox_rate_window:g} s")
        window.append(mono)

    async def rpc_mailbox_deposit(self, ctx: CallContext, args: dict) -> dict:
        """Store an opaque blob for `mailbox`; nothing about the depositor is kept."""
        mailbox = get_bytes(args, "mailbox", size=KEY_SIZE)
        blob = get_bytes(args, "blob", max_size=self.limits.mailbox_blob_size)
        self._take_deposit_slot(mailbox)
        per_box, total_max = self.limits.mailbox_blobs_max, self.limits.mailbox_total_max
        blob_id = self._rng.randrange(1, 2**53)  # fits a double, so any client language can hold it

        def write(conn: sqlite3.Connection) -> None:
            (count,) = conn.execute("SELECT COUNT(*) FROM mail WHERE mailbox = ?", (mailbox,)).fetchone()
            if count >= per_box:
                raise RemoteError("mailbox_full", f"the mailbox holds {per_box} blobs already")
            (total,) = conn.execute("SELECT n FROM counters WHERE name = 'mail'").fetchone()
            if total >= total_max:
                raise RemoteError("coordinator_full", "the coordinator holds no more mailbox blobs")
            bid = blob_id
            while conn.execute("SELECT 1 FROM mail WHERE mailbox = ? AND id = ?", (mailbox, bid)).fetchone():
                bid = self._rng.randrange(1, 2**53)
            conn.execute("INSERT INTO mail (mailbox, id, blob) VALUES (?, ?, ?)", (mailbox, bid, blob))

        await self.db.run(write)
        return {"stored": True}

    def _nonce_mac(self, mailbox: bytes, stamp: bytes) -> bytes:
        return hashlib.blake2b(mailbox + stamp, key=self._challenge_secret, digest_size=NONCE_SIZE - len(stamp)).digest()

    async def rpc_mailbox_challenge(self, ctx: CallContext, args: dict) -> dict:
        """{mailbox} -> {nonce}: a 32-byte single-use nonce valid for `challenge_ttl` seconds."""
        mailbox = get_bytes(args, "mailbox", size=KEY_SIZE)
        # nonce = expiry (8 bytes) + random (8) + MAC (16): verifiable without
        # remembering it, bound to this mailbox, unforgeable without our secret.
        expiry = time.monotonic() + self.limits.challenge_ttl
        stamp = struct.pack(">d", expiry) + secrets.token_bytes(8)
        return {"nonce": stamp + self._nonce_mac(mailbox, stamp)}

    def _check_owner(self, args: dict, action: str) -> bytes:
        mailbox = get_bytes(args, "mailbox", size=KEY_SIZE)
        nonce = get_bytes(args, "nonce", size=NONCE_SIZE)
        signature = get_bytes(args, "signature", size=SIGNATURE_SIZE)
        stamp, mac = nonce[:16], nonce[16:]
        (expiry,) = struct.unpack(">d", stamp[:8])
        mono = time.monotonic()
        if not hmac.compare_digest(mac, self._nonce_mac(mailbox, stamp)) or not mono < expiry:
            raise RemoteError("bad_nonce", "unknown or expired challenge; ask for a new one")
        if nonce in self._mem.used_nonces:
            raise RemoteError("bad_nonce", "challenge already used; ask for a new one")
        if not verify_ed25519(mailbox, mailbox_message(action, mailbox, nonce), signature):
            raise RemoteError("bad_signature", "not signed by the mailbox key")
        # Marked used only after a valid signature: only the owner can fill
        # this set, so it stays as small as the owner's own request rate.
        self._mem.used_nonces[nonce] = expiry
        return mailbox

    async def rpc_mailbox_fetch(self, ctx: CallContext, args: dict) -> list[dict]:
        """The blobs in a mailbox, oldest first, for its key's owner."""
        mailbox = self._check_owner(args, "fetch")

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return row_dicts(conn.execute("SELECT id, blob FROM mail WHERE mailbox = ? ORDER BY seq", (mailbox,)))

        return await self.db.run(read)

    async def rpc_mailbox_delete(self, ctx: CallContext, args: dict) -> dict:
        """Delete the listed blob ids from a mailbox, for its key's owner."""
        ids = get_list(args, "ids", max_len=self.limits.mailbox_blobs_max)
        if not all(type(i) is int and 0 < i < 2**63 for i in ids):
            raise _bad("every id must be a positive integer")
        mailbox = self._check_owner(args, "delete")

        def write(conn: sqlite3.Connection) -> int:
            deleted = 0
            for blob_id in set(ids):
                deleted += conn.execute("DELETE FROM mail WHERE mailbox = ? AND id = ?", (mailbox, blob_id)).rowcount
            return deleted

        return {"deleted": await self.db.run(write)}

    # ---- housekeeping ------------------------------------------------------

    async def maintain(self) -> None:
        """Forget long-silent peers and expired in-memory entries."""
        mono = time.monotonic()
        lim = self.limits
        mem = self._mem
        for box in [b for b, w in mem.deposits.items() if not w or mono - w[-1] >= lim.mailbox_rate_window]:
            del mem.deposits[box]
        for nonce in [n for n, exp in mem.used_nonces.items() if exp <= mono]:
            del mem.used_nonces[nonce]
        for key in [k for k, t in mem.audit_last.items() if mono - t >= lim.audit_report_interval]:
            del mem.audit_last[key]
        cutoff = time.time() - lim.forget_peer_after
        forgotten = await self.db.run(lambda conn: conn.execute("DELETE FROM peers WHERE last_seen < ?", (cutoff,)).rowcount)
        if forgotten:
            log.info("forgot %d peers silent for more than %g s", forgotten, lim.forget_peer_after)

    async def run_maintenance(self) -> None:
        """Run `maintain` forever, every `limits.maintenance_every` seconds, and note every
        AWAKE_EVERY seconds that this coordinator is running (see `_discount_downtime`)."""
        next_maintenance = trio.current_time() + self.limits.maintenance_every
        while True:
            await trio.sleep(min(AWAKE_EVERY, max(0.0, next_maintenance - trio.current_time())))
            await self.db.run(_mark_awake)
            if trio.current_time() >= next_maintenance:
                await self.maintain()
                next_maintenance = trio.current_time() + self.limits.maintenance_every


async def run_coordinator(
    data_dir: Path,
    host: str,
    port: int,
    *,
    heartbeat_interval: float = 30.0,
    limits: CoordinatorLimits | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the coordinator from `data_dir` on host:port until cancelled.

    Reports the bound (host, port) through `task_status` (so port 0 works).
    """
    data_dir = Path(data_dir)
    key = load_or_create_key(data_dir / KEY_NAME)
    coordinator = Coordinator.open(
        data_dir, bytes(key.public_key), heartbeat_interval=heartbeat_interval, limits=limits
    )
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_rpc, coordinator, bytes(key), host, port)
            bound = listeners[0].socket.getsockname()
            log.info("coordinator %s listening on %s:%d", peer_id_text(coordinator.public_key), bound[0], bound[1])
            nursery.start_soon(coordinator.run_maintenance)
            task_status.started((bound[0], bound[1]))
    finally:
        coordinator.close()
