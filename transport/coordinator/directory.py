"""The username directory: username -> Ed25519 public key, first come first served, and contact cards.

A claim is signed by the key it binds and carries a timestamp close to our
clock, so a captured claim cannot be replayed much later. A contact card is
signed by the username's own key; the coordinator checks it here and every
reader checks it again, so the coordinator cannot swap in a box key of its
own.
"""

from __future__ import annotations

import sqlite3
import time

from cryptree.errors import CryptreeError
from cryptree.follow import open_card
from transport.coordinator.limits import CoordinatorLimits
from transport.coordinator.messages import username_claim_message, verify_ed25519
from transport.errors import RemoteError
from transport.sqlite_db import Database


class UserDirectory:
    """Usernames and contact cards in the coordinator's database."""

    def __init__(self, db: Database, limits: CoordinatorLimits) -> None:
        self.db = db
        self.limits = limits

    async def claim(self, username: str, public_key: bytes, timestamp: int, signature: bytes) -> None:
        """Bind `username` to `public_key`; re-claiming with the same key is idempotent."""
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

    async def lookup(self, username: str) -> bytes:
        """The public key that claimed `username`; not_found if nobody did."""

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT public_key FROM users WHERE username = ?", (username,)).fetchone()
            return None if row is None else bytes(row[0])

        key = await self.db.run(read)
        if key is None:
            raise RemoteError("not_found", "no such username")
        return key

    async def put_card(self, username: str, blob: bytes) -> None:
        """Publish the signed contact card `blob` of a claimed `username`."""
        try:
            contact = open_card(blob)
        except CryptreeError as exc:
            raise RemoteError("bad_signature", f"card does not verify: {exc}") from None
        if contact.username != username:
            raise RemoteError("bad_request", "the card names another user")

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT public_key FROM users WHERE username = ?", (username,)).fetchone()
            if row is None or bytes(row[0]) != contact.user_id:
                raise RemoteError("not_found", "claim the username with this key before publishing its card")
            conn.execute("INSERT OR REPLACE INTO cards(username, card) VALUES (?, ?)", (username, blob))

        await self.db.run(write)

    async def get_card(self, username: str) -> bytes:
        """The contact card published for `username`; not_found if none is."""

        def read(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT card FROM cards WHERE username = ?", (username,)).fetchone()
            return None if row is None else bytes(row[0])

        card = await self.db.run(read)
        if card is None:
            raise RemoteError("not_found", "no card for that username; ask them to run `pluto register`")
        return card
