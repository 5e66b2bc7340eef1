"""Client-side pool of connections: one live connection per remote, reused.

A connection that dies is forgotten; the next request dials again, so a peer
that restarts is reached again without the caller doing anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from transport.protocol.dial import dial
from transport.protocol.limits import HANDSHAKE_TIMEOUT
from transport.protocol.rpc import RpcConnection


@dataclass
class PeerPool:
    """Connections keyed by (address, expected peer key). Create with `open_pool`."""

    static_private: bytes
    _nursery: trio.Nursery
    connect_timeout: float = HANDSHAKE_TIMEOUT
    _conns: dict[tuple[str, bytes | None], RpcConnection] = field(default_factory=dict)
    _locks: dict[tuple[str, bytes | None], trio.Lock] = field(default_factory=dict)

    async def get(self, address: str, expected_remote: bytes | None = None) -> RpcConnection:
        """A live connection to `address` (pinned to `expected_remote` if given)."""
        key = (address, expected_remote)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            conn = self._conns.get(key)
            if conn is not None and not conn.closed:
                return conn
            conn = await dial(address, self.static_private, expected_remote, self.connect_timeout)
            self._conns[key] = conn
            self._nursery.start_soon(self._serve, key, conn)
            return conn

    async def _serve(self, key: tuple[str, bytes | None], conn: RpcConnection) -> None:
        try:
            await conn.serve()
        finally:
            if self._conns.get(key) is conn:
                del self._conns[key]

    async def forget(self, address: str, expected_remote: bytes | None = None) -> None:
        """Close and drop the connection to `address`, if any."""
        conn = self._conns.pop((address, expected_remote), None)
        if conn is not None:
            await conn.aclose()

    async def aclose(self) -> None:
        """Close every connection."""
        for conn in list(self._conns.values()):
            await conn.aclose()
        self._conns.clear()


@asynccontextmanager
async def open_pool(static_private: bytes, connect_timeout: float = HANDSHAKE_TIMEOUT) -> AsyncIterator[PeerPool]:
    """A PeerPool whose connections live exactly as long as the `async with` block.

    An exception from the block is re-raised as itself after the pool has
    shut down, not wrapped in an ExceptionGroup by the pool's nursery, so
    callers can write `except RemoteError:` around the block.
    """
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        pool = PeerPool(static_private, nursery, connect_timeout)
        try:
            yield pool
        except Exception as exc:
            error = exc
        finally:
            await pool.aclose()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
