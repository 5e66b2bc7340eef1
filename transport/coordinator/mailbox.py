"""Blind mailboxes: opaque blobs (sealed follow requests) for the holder of an Ed25519 key.

Anyone may deposit; only the key's owner may fetch or delete, by signing a
single-use challenge. Nothing about a depositor is kept (no key, address or
time: the table has no such column), and blob ids are random, so they say
nothing about other mailboxes.

Challenges are stateless MACs under a per-process secret, so nobody can
evict another user's challenge by requesting many; a restart merely
invalidates outstanding ones. Deposit rates and used nonces are abuse
bounds kept in memory only: they need not survive a restart and must not be
persisted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import struct
import time
from collections import deque
from typing import Any, Literal

import trio

from transport.coordinator.limits import CoordinatorLimits
from transport.coordinator.messages import NONCE_SIZE, mailbox_message, verify_ed25519
from transport.coordinator.schema import erase_old_frames
from transport.errors import RemoteError
from transport.sqlite_db import Database, row_dicts


class Mailboxes:
    """Every mailbox, in the coordinator's database, with the in-memory bounds on their use."""

    def __init__(self, db: Database, limits: CoordinatorLimits) -> None:
        self.db = db
        self.limits = limits
        self._secret = secrets.token_bytes(32)
        self._rng = secrets.SystemRandom()
        self._deposits: dict[bytes, deque[float]] = {}  # mailbox -> recent deposit times (monotonic)
        self._used_nonces: dict[bytes, float] = {}  # nonce -> expiry (monotonic)

    def _take_deposit_slot(self, mailbox: bytes) -> None:
        lim = self.limits
        mono = time.monotonic()
        window = self._deposits.setdefault(mailbox, deque())
        while window and mono - window[0] >= lim.mailbox_rate_window:
            window.popleft()
        if len(window) >= lim.mailbox_rate:
            raise RemoteError(
                "rate_limited", f"at most {lim.mailbox_rate} deposits per mailbox per {lim.mailbox_rate_window:g} s"
            )
        window.append(mono)

    async def deposit(self, mailbox: bytes, blob: bytes) -> None:
        """Store an opaque blob for `mailbox`, within the per-mailbox rate and size bounds."""
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

    def _nonce_mac(self, mailbox: bytes, stamp: bytes) -> bytes:
        return hashlib.blake2b(mailbox + stamp, key=self._secret, digest_size=NONCE_SIZE - len(stamp)).digest()

    def challenge(self, mailbox: bytes) -> bytes:
        """A 32-byte single-use nonce for `mailbox`, valid for `limits.challenge_ttl` seconds."""
        # nonce = expiry (8 bytes) + random (8) + MAC (16): verifiable without
        # remembering it, bound to this mailbox, unforgeable without our secret.
        expiry = time.monotonic() + self.limits.challenge_ttl
        stamp = struct.pack(">d", expiry) + secrets.token_bytes(8)
        return stamp + self._nonce_mac(mailbox, stamp)

    def check_owner(self, mailbox: bytes, nonce: bytes, signature: bytes, action: Literal["fetch", "delete"]) -> None:
        """Refuse unless `signature` is the mailbox key's over `action` and a fresh, unused challenge."""
        stamp, mac = nonce[:16], nonce[16:]
        (expiry,) = struct.unpack(">d", stamp[:8])
        mono = time.monotonic()
        if not hmac.compare_digest(mac, self._nonce_mac(mailbox, stamp)) or not mono < expiry:
            raise RemoteError("bad_nonce", "unknown or expired challenge; ask for a new one")
        if nonce in self._used_nonces:
            raise RemoteError("bad_nonce", "challenge already used; ask for a new one")
        if not verify_ed25519(mailbox, mailbox_message(action, mailbox, nonce), signature):
            raise RemoteError("bad_signature", "not signed by the mailbox key")
        # Marked used only after a valid signature: only the owner can fill
        # this set, so it stays as small as the owner's own request rate.
        self._used_nonces[nonce] = expiry

    async def fetch(self, mailbox: bytes) -> list[dict[str, Any]]:
        """The blobs in `mailbox` as {id, blob}, oldest first (the caller has proved ownership)."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return row_dicts(conn.execute("SELECT id, blob FROM mail WHERE mailbox = ? ORDER BY seq", (mailbox,)))

        return await self.db.run(read)

    async def delete(self, mailbox: bytes, ids: set[int]) -> int:
        """Delete the blobs `ids` from `mailbox`; returns how many existed (the caller has proved ownership).

        Order: delete (secure_delete zeroes the rows in their pages), commit,
        then checkpoint and truncate the WAL (schema.erase_old_frames), so
        when this returns the blobs' bytes are in neither coordinator.sqlite
        nor its -wal.
        """

        def write(conn: sqlite3.Connection) -> int:
            deleted = 0
            for blob_id in ids:
                deleted += conn.execute("DELETE FROM mail WHERE mailbox = ? AND id = ?", (mailbox, blob_id)).rowcount
            return deleted

        deleted = await self.db.run(write)
        if deleted:
            await trio.to_thread.run_sync(erase_old_frames, self.db)
        return deleted

    def forget_expired(self, mono: float) -> None:
        """Drop quiet deposit windows and expired nonces (monotonic time `mono`)."""
        window = self.limits.mailbox_rate_window
        for box in [b for b, w in self._deposits.items() if not w or mono - w[-1] >= window]:
            del self._deposits[box]
        for nonce in [n for n, exp in self._used_nonces.items() if exp <= mono]:
            del self._used_nonces[nonce]
