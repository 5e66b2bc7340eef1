"""Dialling side: open an authenticated RPC connection to a remote."""

from __future__ import annotations

import trio

from transport.errors import ConnectionClosed, HandshakeError
from transport.protocol.limits import HANDSHAKE_TIMEOUT
from transport.protocol.noise_channel import handshake
from transport.protocol.rpc import RpcConnection


def parse_address(text: str, allow_any_port: bool = False) -> tuple[str, int]:
    """Split 'HOST:PORT' (IPv6 as '[::1]:PORT'); ValueError with one line if malformed.

    `allow_any_port` admits port 0, meaning "let the kernel choose" when listening.
    """
    if not isinstance(text, str) or ":" not in text or not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError(f"address {text!r} must look like HOST:PORT")
    host, _, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    low = 0 if allow_any_port else 1
    if not host or not port_text.isdigit() or len(port_text) > 5 or not low <= int(port_text) < 65536:
        raise ValueError(f"address {text!r} must look like HOST:PORT with a port from {low} to 65535")
    return host, int(port_text)


async def dial(
    address: str,
    static_private: bytes,
    expected_remote: bytes | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> RpcConnection:
    """Connect, handshake and return an RpcConnection (not yet serving: run `serve()`)."""
    host, port = parse_address(address)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError as exc:
        raise ConnectionClosed(f"{address}: connect timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectionClosed(f"{address}: {exc.strerror or exc}") from exc
    try:
        channel = await handshake(
            stream, static_private, initiator=True, expected_remote=expected_remote, timeout=timeout
        )
    except HandshakeError:
        await stream.aclose()
        raise
    return RpcConnection(channel, address)
