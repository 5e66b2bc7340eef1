"""Accepting side: a TCP listener that authenticates every connection with Noise.

A connection that fails the handshake, sends garbage or breaks the protocol
is closed and logged in one line; the listener and every other connection
carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from transport.errors import HandshakeError
from transport.protocol.gate import Admission, Gate
from transport.protocol.limits import HANDSHAKE_TIMEOUT
from transport.protocol.noise_channel import handshake
from transport.protocol.rpc import CallContext, RpcConnection, server_connection
from transport.protocol.wire import Map

log = logging.getLogger(__name__)


class RpcService:
    """Base class for a service: methods named `rpc_<name>` answer requests.

    Upload-taking methods are listed in `UPLOAD_METHODS`.
    """

    UPLOAD_METHODS: frozenset[str] = frozenset()

    async def dispatch(self, ctx: CallContext, method: str, args: Map) -> Any:
        """Route a request to `rpc_<method>`; unknown methods are refused."""
        from transport.errors import RemoteError

        fn: Callable[[CallContext, Map], Awaitable[Any]] | None = getattr(self, f"rpc_{method}", None)
        if fn is None:
            raise RemoteError("unknown_method", f"no method {method!r}")
        return await fn(ctx, args)

    def on_connection(self, conn: RpcConnection) -> None:
        """Hook called for every authenticated connection (e.g. to remember it)."""


async def serve_rpc(
    service: RpcService,
    static_private: bytes,
    host: str,
    port: int,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port and serve `service` to every authenticated connection.

    Admission (handshake slots, connection slots, the shared receive
    budget) is decided by `gate`, a fresh `Gate` with the default limits
    unless one is given.
    """
    gate = gate or Gate()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            ip = str(peer[0])
            address = f"[{ip}]:{peer[1]}" if ":" in ip else f"{ip}:{peer[1]}"
        except OSError:
            ip = address = "?"
        adm = gate.arrive(ip, address)
        try:
            with adm.scope:
                try:
                    channel = await handshake(stream, static_private, initiator=False, timeout=handshake_timeout)
                except HandshakeError as exc:
                    log.info("dropped %s: %s", address, exc)
                    return
                conn = server_connection(channel, address, service.dispatch, service.UPLOAD_METHODS)
                gate.authenticated(adm, conn)
                service.on_connection(conn)
                await conn.serve()
            if adm.scope.cancelled_caught:
                log.info("dropped %s: %s", address, adm.dropped or channel_reason(adm))
        finally:
            gate.leave(adm)
            await _close_quietly(stream)

    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners)
    await trio.serve_listeners(handle, listeners)


def channel_reason(adm: Admission) -> str:
    """Why a connection the gate did not drop itself was cancelled (the shared receive budget)."""
    if adm.conn is not None and adm.conn.channel.dropped:
        return adm.conn.channel.dropped
    return "cancelled"


async def _close_quietly(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
