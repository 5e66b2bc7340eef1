"""The coordinator's RPC service: rendezvous for peers, username directory, blind mailboxes.

This module is the RPC boundary only: it validates every argument a caller
sends (with transport.protocol.args and the few helpers below) and hands
typed values to the part that does the work:

- registry.py: storage peers keyed by their Noise static key (address,
  capacity, heartbeats, audit outcomes) and the storage-exchange books;
  reputation.py holds the pure rules that judge a peer;
- directory.py: username -> Ed25519 public key, and contact cards;
- mailbox.py: opaque blobs (sealed follow requests) for a key's owner.

All state is in one SQLite file (schema.py) that survives restarts. What the
coordinator deliberately never stores: who deposited a blob (neither
transport key nor address nor time), which client reported which audit,
which client stores data on which peer (both kept in memory only), a
deleted blob (erased from the file and its WAL). See docs/COORDINATOR.md.

Every refusal is a RemoteError with a short code.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import trio

from transport.coordinator.directory import UserDirectory
from transport.coordinator.limits import CoordinatorLimits
from transport.coordinator.mailbox import Mailboxes
from transport.coordinator.messages import (
    ADDRESS_MAX,
    CARD_MAX,
    NONCE_SIZE,
    SIGNATURE_SIZE,
    USERNAME_RE,
    is_valid_username,
)
from transport.coordinator.registry import AWAKE_EVERY, PeerRegistry, discount_downtime, mark_awake
from transport.coordinator.schema import DB_NAME, open_database
from transport.errors import RemoteError
from transport.protocol.args import get_bool, get_bytes, get_int, get_list, get_str
from transport.protocol.dial import parse_address
from transport.protocol.keys import load_or_create_key
from transport.protocol.peer_id import KEY_SIZE, peer_id_text
from transport.protocol.rpc import CallContext
from transport.protocol.server import RpcService, serve_rpc
from transport.protocol.wire import Map
from transport.sqlite_db import Database

__all__ = ["DB_NAME", "KEY_NAME", "USERNAME_RE", "Coordinator", "CoordinatorLimits", "run_coordinator"]

log = logging.getLogger(__name__)

KEY_NAME = "coordinator.key"


# ---- argument helpers specific to the coordinator ---------------------------


def _bad(message: str) -> RemoteError:
    return RemoteError("bad_request", message)


def _get_usage(args: Map, max_items: int) -> list[tuple[bytes, int]] | None:
    """Optional per-client usage report: [[client key (32 bytes), bytes], ...]."""
    raw = args.get("clients")
    if raw is None:
        return None
    items = get_list(args, "clients", max_len=max_items)
    out = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or len(item[0]) != 32
            or type(item[1]) is not int
            or not 0 <= item[1] < 2**62
        ):
            raise _bad("clients must be a list of [32-byte key, bytes] pairs")
        out.append((item[0], item[1]))
    return out


def _get_seconds(args: Map, name: str, *, low: float, high: float, default: float) -> float:
    """A positive finite number of seconds, capped to `high` (args.py has no float validator)."""
    value: Any = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"argument {name!r} must be a number of seconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"argument {name!r} must be finite")
    if value < low:
        raise _bad(f"argument {name!r} must be at least {low:g}")
    return high if value > high else float(value)  # compared before float() so huge ints cannot overflow


def _get_key_list(args: Map, name: str, *, max_len: int) -> list[bytes]:
    items = get_list(args, name, max_len=max_len, default=[])
    keys: list[bytes] = []
    for item in items:
        if not isinstance(item, bytes) or len(item) != KEY_SIZE:
            raise _bad(f"every item of {name!r} must be {KEY_SIZE} bytes")
        keys.append(item)
    return keys


def _get_username(args: Map) -> str:
    name = get_str(args, "username", max_len=32)
    if not is_valid_username(name):
        raise _bad("username must be 1-32 characters of a-z, 0-9, '_' and '-'")
    return name


def _observed_host(remote_address: str) -> str:
    host = remote_address.rpartition(":")[0]
    return host.strip("[]")


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _get_address(args: Map, ctx: CallContext) -> str:
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


def _get_optional_key(args: Map, name: str) -> bytes | None:
    return get_bytes(args, name, size=32) if args.get(name) is not None else None


# ---- the service -----------------------------------------------------------


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
        self.limits = limits or CoordinatorLimits()
        self.peers = PeerRegistry(db, self.limits, heartbeat_interval)
        self.users = UserDirectory(db, self.limits)
        self.mailboxes = Mailboxes(db, self.limits)

    @property
    def heartbeat_interval(self) -> float:
        """The longest heartbeat interval a peer may declare, and the default."""
        return self.peers.heartbeat_interval

    @classmethod
    def open(
        cls,
        data_dir: Path,
        public_key: bytes,
        *,
        heartbeat_interval: float = 30.0,
        limits: CoordinatorLimits | None = None,
    ) -> Coordinator:
        """Open (creating if needed) DATA/coordinator.sqlite and return a Coordinator on it."""
        coordinator = cls(open_database(data_dir), public_key, heartbeat_interval=heartbeat_interval, limits=limits)
        shift = coordinator.db.run_sync(discount_downtime)
        if shift > 0:
            log.info("was down for %.0f s: peers are not judged for that time", shift)
        return coordinator

    def close(self) -> None:
        """Close the database; call only when no request is running."""
        self.db.close()

    # ---- peers -------------------------------------------------------------

    async def rpc_ping(self, ctx: CallContext, args: Map) -> Map:
        """{} -> {peer_id}: the coordinator's own peer id, so clients can pin it."""
        return {"peer_id": peer_id_text(self.public_key)}

    async def rpc_register(self, ctx: CallContext, args: Map) -> Map:
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
        owner = _get_optional_key(args, "owner")
        await self.peers.register(ctx.remote_key, address, capacity, free, interval, owner)
        return {"peer_id": ctx.remote_id, "address": address, "heartbeat_interval": interval}

    async def rpc_heartbeat(self, ctx: CallContext, args: Map) -> Map:
        """Record that the caller is alive with `free` and `used` bytes."""
        free = get_int(args, "free")
        used = get_int(args, "used")
        clients = _get_usage(args, self.limits.usage_report_max)
        interval = await self.peers.heartbeat(ctx.remote_key, free, used, clients)
        return {"heartbeat_interval": interval}

    async def rpc_allowance(self, ctx: CallContext, args: Map) -> Map:
        """Storage exchange: what `client` (default: the caller) offers, may store and stores (raw bytes)."""
        client = _get_optional_key(args, "client") or ctx.remote_key
        return dict(await self.peers.allowance(client))

    async def rpc_find_peers(self, ctx: CallContext, args: Map) -> list[Map]:
        """Up to `n` distinct, alive, eligible peers with free space, not in `exclude` nor the caller."""
        n = get_int(args, "n", low=1, high=self.limits.find_peers_max)
        exclude = set(_get_key_list(args, "exclude", max_len=self.limits.exclude_max))
        min_free = get_int(args, "min_free", low=1, default=1)
        exclude.add(ctx.remote_key)
        return await self.peers.find_peers(n, exclude, min_free)

    async def rpc_lookup_peer(self, ctx: CallContext, args: Map) -> Map:
        """{id} -> {address, alive}: where a peer is now (it re-registers after moving)."""
        return await self.peers.lookup_peer(get_bytes(args, "id", size=KEY_SIZE))

    async def rpc_list_peers(self, ctx: CallContext, args: Map) -> list[Map]:
        """Every registered peer (most recently seen first, capped) with uptime and reputation."""
        return await self.peers.list_peers()

    async def rpc_report_audit(self, ctx: CallContext, args: Map) -> Map:
        """Count one audit run against `peer`: {peer, passed, failed} counts, or the older {peer, ok}.

        Counted only from a reporter the peer itself says it stores data for;
        rules in PeerRegistry.report_audit and docs/TRUST.md "Reputation".
        """
        peer = get_bytes(args, "peer", size=KEY_SIZE)
        if "ok" in args:
            ok = get_bool(args, "ok")
            passed, failed = int(ok), int(not ok)
        else:
            passed = get_int(args, "passed", low=0, high=2**31)
            failed = get_int(args, "failed", low=0, high=2**31)
            if passed + failed == 0:
                raise _bad("a report needs at least one passed or failed challenge")
        return {"counted": await self.peers.report_audit(ctx.remote_key, peer, passed, failed)}

    # ---- usernames ---------------------------------------------------------

    async def rpc_claim_username(self, ctx: CallContext, args: Map) -> Map:
        """Bind `username` to an Ed25519 key, first come first served; re-claiming is idempotent."""
        username = _get_username(args)
        public_key = get_bytes(args, "public_key", size=KEY_SIZE)
        timestamp = get_int(args, "timestamp")
        signature = get_bytes(args, "signature", size=SIGNATURE_SIZE)
        await self.users.claim(username, public_key, timestamp, signature)
        return {"username": username}

    async def rpc_lookup_user(self, ctx: CallContext, args: Map) -> Map:
        """{username} -> {public_key}, or not_found."""
        return {"public_key": await self.users.lookup(_get_username(args))}

    async def rpc_put_card(self, ctx: CallContext, args: Map) -> Map:
        """{username, card}: publish the signed contact card of a claimed username."""
        username = _get_username(args)
        blob = get_bytes(args, "card", max_size=CARD_MAX)
        await self.users.put_card(username, blob)
        return {"stored": True}

    async def rpc_get_card(self, ctx: CallContext, args: Map) -> Map:
        """{username} -> {card}, or not_found."""
        return {"card": await self.users.get_card(_get_username(args))}

    # ---- mailboxes ---------------------------------------------------------

    async def rpc_mailbox_deposit(self, ctx: CallContext, args: Map) -> Map:
        """Store an opaque blob for `mailbox`; nothing about the depositor is kept."""
        mailbox = get_bytes(args, "mailbox", size=KEY_SIZE)
        blob = get_bytes(args, "blob", max_size=self.limits.mailbox_blob_size)
        await self.mailboxes.deposit(mailbox, blob)
        return {"stored": True}

    async def rpc_mailbox_challenge(self, ctx: CallContext, args: Map) -> Map:
        """{mailbox} -> {nonce}: a 32-byte single-use nonce valid for `challenge_ttl` seconds."""
        return {"nonce": self.mailboxes.challenge(get_bytes(args, "mailbox", size=KEY_SIZE))}

    def _check_owner(self, args: Map, action: Literal["fetch", "delete"]) -> bytes:
        mailbox = get_bytes(args, "mailbox", size=KEY_SIZE)
        nonce = get_bytes(args, "nonce", size=NONCE_SIZE)
        signature = get_bytes(args, "signature", size=SIGNATURE_SIZE)
        self.mailboxes.check_owner(mailbox, nonce, signature, action)
        return mailbox

    async def rpc_mailbox_fetch(self, ctx: CallContext, args: Map) -> list[Map]:
        """The blobs in a mailbox, oldest first, for its key's owner."""
        return await self.mailboxes.fetch(self._check_owner(args, "fetch"))

    async def rpc_mailbox_delete(self, ctx: CallContext, args: Map) -> Map:
        """Delete the listed blob ids from a mailbox, for its key's owner."""
        ids = get_list(args, "ids", max_len=self.limits.mailbox_blobs_max)
        if not all(type(i) is int and 0 < i < 2**63 for i in ids):
            raise _bad("every id must be a positive integer")
        mailbox = self._check_owner(args, "delete")
        return {"deleted": await self.mailboxes.delete(mailbox, set(ids))}

    # ---- housekeeping ------------------------------------------------------

    async def maintain(self) -> None:
        """Forget long-silent peers and expired in-memory entries."""
        mono = time.monotonic()
        self.mailboxes.forget_expired(mono)
        self.peers.forget_expired(mono)
        forgotten = await self.peers.forget_silent_peers()
        if forgotten:
            log.info("forgot %d peers silent for more than %g s", forgotten, self.limits.forget_peer_after)

    async def run_maintenance(self) -> None:
        """Run `maintain` forever, every `limits.maintenance_every` seconds, and note every
        AWAKE_EVERY seconds that this coordinator is running (see registry.discount_downtime)."""
        next_maintenance = trio.current_time() + self.limits.maintenance_every
        while True:
            await trio.sleep(min(AWAKE_EVERY, max(0.0, next_maintenance - trio.current_time())))
            await self.db.run(mark_awake)
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
