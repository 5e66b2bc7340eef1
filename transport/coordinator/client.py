"""Typed client for the coordinator's RPC methods.

Answers are checked before use: a coordinator is a remote party too, and a
malformed answer raises ProtocolError instead of leaking odd types into the
caller. Every call carries a timeout.

Depositing a follow request with the device's own transport key would show
the coordinator which device sent it; `deposit_anonymously` dials with a
throwaway key for exactly that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from transport.coordinator.messages import (
    ADDRESS_MAX,
    CARD_MAX,
    NONCE_SIZE,
    is_valid_username,
    mailbox_message,
    username_claim_message,
)
from transport.errors import ProtocolError, RemoteError
from transport.protocol.args import get_bool, get_bytes, get_int, get_str
from transport.protocol.dial import dial
from transport.protocol.peer_id import KEY_SIZE
from transport.protocol.pool import PeerPool
from transport.protocol.rpc import RpcConnection
from transport.protocol.wire import Map

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # the coordinator answers from one SQLite file; 10 s means it is in trouble
OFFLINE_MAX = 100 * 365 * 86400.0  # no real peer has been silent for a century: a bigger figure is garbage


@dataclass(frozen=True)
class FoundPeer:
    """A peer offered for placement."""

    id: bytes
    address: str
    free: int


@dataclass(frozen=True)
class Allowance:
    """Storage exchange, in raw bytes on peers (user data costs n/k times its size)."""

    offered: int
    grace: int
    allowed: int
    used: int


@dataclass(frozen=True)
class PeerLocation:
    """Where a known peer is, and whether it is heartbeating."""

    address: str
    alive: bool


@dataclass(frozen=True)
class PeerRecord:
    """One row of the coordinator's peer registry."""

    id: bytes
    address: str
    capacity: int
    free: int
    used: int
    alive: bool
    uptime: float
    audits_ok: int
    audits_failed: int
    reputation: float
    eligible: bool
    # Seconds the coordinator has not heard from a peer that is not alive (0 when
    # alive); None from a coordinator too old to say, which callers must treat as
    # "gone for an unknown time".
    offline_for: float | None = None
    disqualified: bool = False  # suspended or failed too many audits: its data should move
    # Whether the coordinator counts it in the network's membership (where slots live); None from a
    # coordinator too old to say, in which case the client applies its own repair grace.
    member: bool | None = None


@dataclass(frozen=True)
class MailItem:
    """One opaque blob in a mailbox."""

    id: int
    blob: bytes


def _check(fn: Callable[P, T], *a: P.args, **kw: P.kwargs) -> T:
    """Run an args.py validator on an answer; a bad answer is the remote's protocol error."""
    try:
        return fn(*a, **kw)
    except RemoteError as exc:
        raise ProtocolError(f"malformed coordinator answer: {exc.message}") from None


def _fraction(item: Map, name: str) -> float:
    value = item.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ProtocolError(f"malformed coordinator answer: {name!r} must be a number from 0 to 1")
    return float(value)


def _optional_bool(item: Map, name: str) -> bool | None:
    """An optional boolean field of an answer: None when absent."""
    value = item.get(name)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(f"malformed coordinator answer: {name!r} must be true or false")
    return value


def _offline_for(item: Map, alive: bool) -> float | None:
    """The optional `offline_for` of a peer row: finite seconds from 0 to OFFLINE_MAX, 0 if alive."""
    if "offline_for" not in item:
        return None  # an older coordinator: the caller falls back to "not alive means lost"
    value = item["offline_for"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= OFFLINE_MAX:
        # The range check is false for NaN too, and compares huge ints before any float() overflows.
        raise ProtocolError(
            f"malformed coordinator answer: 'offline_for' must be a number of seconds from 0 to {OFFLINE_MAX:g}"
        )
    if alive and value != 0:
        raise ProtocolError("malformed coordinator answer: an alive peer cannot have been offline")
    return float(value)


def _dict(value: Any) -> Map:
    if not isinstance(value, dict):
        raise ProtocolError("malformed coordinator answer: expected a map")
    return value


def _list(value: Any, max_len: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > max_len:
        raise ProtocolError(f"malformed coordinator answer: expected a list of at most {max_len} items")
    return value


class CoordinatorClient:
    """One async method per coordinator RPC, over a connection or a pool.

    With a pool, each call asks the pool for a live connection, so a
    restarted coordinator is dialled again transparently on the next call.
    """

    def __init__(
        self,
        conn: RpcConnection | None = None,
        *,
        pool: PeerPool | None = None,
        address: str = "",
        expected_key: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Use an established, serving `conn`, or dial `address` through `pool` on each call."""
        if (conn is None) == (pool is None):
            raise ValueError("give either a connection or a pool and an address")
        if pool is not None and not address:
            raise ValueError("a pool needs the coordinator's address")
        self._conn = conn
        self._pool = pool
        self._address = address
        self._expected = expected_key
        self.timeout = timeout

    @classmethod
    def from_pool(
        cls, pool: PeerPool, address: str, *, expected_key: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> CoordinatorClient:
        """Reach the coordinator at `address` through `pool`, pinned to `expected_key` if given."""
        return cls(pool=pool, address=address, expected_key=expected_key, timeout=timeout)

    async def _call(self, method: str, args: Map) -> Any:
        if self._pool is not None:
            conn = await self._pool.get(self._address, self._expected)
        else:
            assert self._conn is not None  # guaranteed by __init__
            conn = self._conn
        return await conn.call(method, args, timeout=self.timeout)

    # ---- peers -------------------------------------------------------------

    async def ping(self) -> str:
        """The coordinator's peer id (text form)."""
        return _check(get_str, _dict(await self._call("ping", {})), "peer_id", max_len=128)

    async def register(
        self, address: str, capacity: int, free: int, heartbeat_interval: float | None = None,
        owner: bytes | None = None,
    ) -> float:
        """Register this device's transport key as a peer at `address`; returns the heartbeat interval to use.

        `owner` is the device key of the user whose storage-exchange allowance this peer's capacity raises.
        """
        args: dict[str, Any] = {"address": address, "capacity": capacity, "free": free}
        if heartbeat_interval is not None:
            args["heartbeat_interval"] = heartbeat_interval
        if owner is not None:
            args["owner"] = owner
        answer = _dict(await self._call("register", args))
        return _interval(answer)

    async def heartbeat(self, free: int, used: int, clients: list[tuple[bytes, int]] | None = None) -> float:
        """Report liveness, space and (optionally) raw bytes stored per client; returns the interval to keep."""
        args: dict[str, Any] = {"free": free, "used": used}
        if clients is not None:
            args["clients"] = [[c, b] for c, b in clients]
        return _interval(_dict(await self._call("heartbeat", args)))

    async def allowance(self, client: bytes | None = None) -> Allowance:
        """Storage exchange figures (raw bytes) for `client`, default this device."""
        args = {} if client is None else {"client": client}
        answer = _dict(await self._call("allowance", args))
        return Allowance(*(_check(get_int, answer, name) for name in ("offered", "grace", "allowed", "used")))

    async def find_peers(self, n: int, exclude: Iterable[bytes] = (), min_free: int = 1) -> list[FoundPeer]:
        """Up to `n` distinct eligible peers, none of them in `exclude` (may be fewer)."""
        answer = _list(await self._call("find_peers", {"n": n, "exclude": list(exclude), "min_free": min_free}), n)
        out = []
        for item in answer:
            item = _dict(item)
            out.append(
                FoundPeer(
                    id=_check(get_bytes, item, "id", size=KEY_SIZE),
                    address=_check(get_str, item, "address", max_len=ADDRESS_MAX),
                    free=_check(get_int, item, "free"),
                )
            )
        if len({p.id for p in out}) != len(out):
            raise ProtocolError("malformed coordinator answer: the same peer offered twice")
        return out

    async def lookup_peer(self, peer: bytes) -> PeerLocation | None:
        """Where peer `peer` (its 32-byte key) is; None if the coordinator does not know it."""
        try:
            answer = _dict(await self._call("lookup_peer", {"id": peer}))
        except RemoteError as exc:
            if exc.code == "not_found":
                return None
            raise
        return PeerLocation(
            address=_check(get_str, answer, "address", max_len=ADDRESS_MAX), alive=_check(get_bool, answer, "alive")
        )

    async def list_peers(self) -> list[PeerRecord]:
        """The coordinator's registry with uptime and reputation."""
        out = []
        for item in _list(await self._call("list_peers", {}), 100_000):
            item = _dict(item)
            alive = _check(get_bool, item, "alive")
            out.append(
                PeerRecord(
                    id=_check(get_bytes, item, "id", size=KEY_SIZE),
                    address=_check(get_str, item, "address", max_len=ADDRESS_MAX),
                    capacity=_check(get_int, item, "capacity"),
                    free=_check(get_int, item, "free"),
                    used=_check(get_int, item, "used"),
                    alive=alive,
                    uptime=_fraction(item, "uptime"),
                    audits_ok=_check(get_int, item, "audits_ok"),
                    audits_failed=_check(get_int, item, "audits_failed"),
                    reputation=_fraction(item, "reputation"),
                    eligible=_check(get_bool, item, "eligible", default=True),
                    offline_for=_offline_for(item, alive),
                    disqualified=_check(get_bool, item, "disqualified", default=False),
                    member=_optional_bool(item, "member"),
                )
            )
        if len({p.id for p in out}) != len(out):
            # Two rows for one peer would let a hostile coordinator pick which state a client sees.
            raise ProtocolError("malformed coordinator answer: the same peer listed twice")
        return out

    async def report_audit(self, peer: bytes, ok: bool | None = None, *, passed: int = 0, failed: int = 0) -> bool:
        """Report how `peer` did: one outcome (`ok`), or one audit run's `passed` and `failed` counts.

        False if it was not counted: the peer stores nothing for this client
        (as far as the coordinator knows), or a clean report came too soon
        after the last one. Rules: docs/TRUST.md "Reputation".
        """
        if ok is not None:
            args: dict[str, object] = {"peer": peer, "ok": ok}
        else:
            if passed < 0 or failed < 0 or passed + failed == 0:
                raise ValueError("a report needs at least one passed or failed challenge")
            args = {"peer": peer, "passed": passed, "failed": failed}
        return _check(get_bool, _dict(await self._call("report_audit", args)), "counted")

    # ---- usernames ---------------------------------------------------------

    async def claim_username(self, signing_key: SigningKey, username: str, timestamp: int | None = None) -> None:
        """Claim `username` for `signing_key`'s public key (RemoteError "taken" if someone else has it)."""
        if not is_valid_username(username):
            raise ValueError("username must be 1-32 characters of a-z, 0-9, '_' and '-'")
        public_key = bytes(signing_key.verify_key)
        ts = int(time.time()) if timestamp is None else timestamp
        signature = signing_key.sign(username_claim_message(username, public_key, ts)).signature
        await self._call(
            "claim_username", {"username": username, "public_key": public_key, "timestamp": ts, "signature": signature}
        )

    async def lookup_user(self, username: str) -> bytes | None:
        """The Ed25519 public key behind `username`, or None if unclaimed."""
        try:
            answer = _dict(await self._call("lookup_user", {"username": username}))
        except RemoteError as exc:
            if exc.code == "not_found":
                return None
            raise
        return _check(get_bytes, answer, "public_key", size=KEY_SIZE)

    async def put_card(self, username: str, card: bytes) -> None:
        """Publish the signed contact card of `username` (claimed by the card's key)."""
        await self._call("put_card", {"username": username, "card": card})

    async def get_card(self, username: str) -> bytes | None:
        """The signed contact card of `username`, or None (verify it with cryptree.follow.open_card)."""
        try:
            answer = _dict(await self._call("get_card", {"username": username}))
        except RemoteError as exc:
            if exc.code == "not_found":
                return None
            raise
        return _check(get_bytes, answer, "card", max_size=CARD_MAX)

    # ---- mailboxes ---------------------------------------------------------

    async def mailbox_deposit(self, mailbox: bytes, blob: bytes) -> None:
        """Leave an opaque blob in `mailbox` over this connection (see `deposit_anonymously`)."""
        await self._call("mailbox_deposit", {"mailbox": mailbox, "blob": blob})

    async def mailbox_challenge(self, mailbox: bytes) -> bytes:
        """A fresh single-use nonce for proving ownership of `mailbox`."""
        answer = _dict(await self._call("mailbox_challenge", {"mailbox": mailbox}))
        return _check(get_bytes, answer, "nonce", size=NONCE_SIZE)

    async def mailbox_fetch(self, mailbox: bytes, nonce: bytes, signature: bytes) -> list[MailItem]:
        """The blobs in `mailbox`, given a nonce and the owner's signature over it."""
        answer = await self._call("mailbox_fetch", {"mailbox": mailbox, "nonce": nonce, "signature": signature})
        items = []
        for item in _list(answer, 100_000):
            item = _dict(item)
            blob = _check(get_bytes, item, "blob", max_size=1 << 20)
            items.append(MailItem(id=_check(get_int, item, "id"), blob=blob))
        return items

    async def mailbox_delete(self, mailbox: bytes, nonce: bytes, signature: bytes, ids: Iterable[int]) -> int:
        """Delete blob ids from `mailbox`, given a nonce and the owner's signature; returns how many went."""
        answer = await self._call(
            "mailbox_delete", {"mailbox": mailbox, "nonce": nonce, "signature": signature, "ids": list(ids)}
        )
        return _check(get_int, _dict(answer), "deleted")

    async def fetch_mailbox(self, signing_key: SigningKey) -> list[MailItem]:
        """Challenge + fetch: the blobs in the mailbox of `signing_key`'s public key."""
        mailbox = bytes(signing_key.verify_key)
        nonce = await self.mailbox_challenge(mailbox)
        signature = signing_key.sign(mailbox_message("fetch", mailbox, nonce)).signature
        return await self.mailbox_fetch(mailbox, nonce, signature)

    async def delete_from_mailbox(self, signing_key: SigningKey, ids: Iterable[int]) -> int:
        """Challenge + delete: remove `ids` from the mailbox of `signing_key`'s public key."""
        mailbox = bytes(signing_key.verify_key)
        nonce = await self.mailbox_challenge(mailbox)
        signature = signing_key.sign(mailbox_message("delete", mailbox, nonce)).signature
        return await self.mailbox_delete(mailbox, nonce, signature, ids)


def _interval(answer: Map) -> float:
    value = answer.get("heartbeat_interval")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86400 * 365:
        raise ProtocolError("malformed coordinator answer: bad heartbeat_interval")
    return float(value)


async def deposit_anonymously(
    address: str,
    mailbox: bytes,
    blob: bytes,
    *,
    expected_key: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Deposit `blob` into `mailbox` over a fresh connection with a throwaway transport key.

    The coordinator stores nothing about depositors, but it does see the
    connection: a one-off key keeps the deposit unlinkable to this device's
    peer id (the IP address still shows; hiding it needs Tor).
    """
    throwaway = bytes(PrivateKey.generate())
    conn = await dial(address, throwaway, expected_key, timeout=timeout)
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        try:
            await CoordinatorClient(conn, timeout=timeout).mailbox_deposit(mailbox, blob)
        except Exception as exc:
            # Re-raised outside the nursery: trio would wrap it in an
            # ExceptionGroup and `except RemoteError` in callers would miss it.
            error = exc
        finally:
            await conn.aclose()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
