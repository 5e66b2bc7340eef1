"""Flood a local grid and time an honest client meanwhile: one line per attack.

    python -m tools.attack.flood            # starts a grid of one coordinator and one peer
    python -m tools.attack.flood --peer HOST:PORT --coordinator HOST:PORT

Each attack opens its connections, holds them while an honest client dials
and pings the target, then lets them go. The report says what was tried,
what it cost the attacker, and what the honest client saw. The functions
are also the tests' attackers (tests/transport/test_floods.py).
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from nacl.public import PrivateKey

from transport.errors import TransportError
from transport.protocol.dial import dial
from transport.protocol.noise_channel import NoiseChannel, handshake


async def _open(address: str) -> trio.SocketStream:
    host, port = address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def _close_all(streams: list[trio.SocketStream]) -> None:
    with trio.CancelScope(shield=True):
        for stream in streams:
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


@asynccontextmanager
async def silent_connections(address: str, n: int) -> AsyncIterator[str]:
    """Open `n` TCP connections that never send a byte; yield the attacker's cost."""
    streams: list[trio.SocketStream] = []
    start = time.monotonic()
    try:
        for _ in range(n):
            try:
                streams.append(await _open(address))
            except OSError:
                break
        yield f"{len(streams)} silent TCP connections in {time.monotonic() - start:.1f} s"
    finally:
        await _close_all(streams)


@asynccontextmanager
async def throwaway_handshakes(address: str, n: int) -> AsyncIterator[str]:
    """Complete `n` Noise handshakes, each with a fresh key, and hold the connections idle."""
    streams: list[trio.SocketStream] = []
    start = time.monotonic()
    try:
        for _ in range(n):
            try:
                stream = await _open(address)
                streams.append(stream)
                await handshake(stream, bytes(PrivateKey.generate()), initiator=True)
            except (OSError, TransportError):
                continue
        yield f"{len(streams)} handshakes with throwaway keys in {time.monotonic() - start:.1f} s"
    finally:
        await _close_all(streams)


async def start_message(channel: NoiseChannel, announced: int, sent: int) -> None:
    """Send the first `sent` bytes of a message announcing `announced` bytes (a genuine, valid channel)."""
    payload = struct.pack(">I", announced) + bytes(sent)
    for off in range(0, len(payload), 65519):
        ct = channel._enc.encrypt_with_ad(None, payload[off : off + 65519])
        await channel.stream.send_all(len(ct).to_bytes(2, "big") + ct)


@asynccontextmanager
async def unfinished_messages(
    address: str, n: int, announced: int = 4 << 20, sent: int = (4 << 20) - 1
) -> AsyncIterator[str]:
    """`n` authenticated connections, each holding a message of `announced` bytes with only `sent` of them sent."""
    streams: list[trio.SocketStream] = []
    start = time.monotonic()
    try:
        for _ in range(n):
            try:
                stream = await _open(address)
                streams.append(stream)
                channel = await handshake(stream, bytes(PrivateKey.generate()), initiator=True)
                await start_message(channel, announced, sent)
            except (OSError, TransportError, trio.BrokenResourceError):
                continue
        took = time.monotonic() - start
        yield f"{n} unfinished {announced >> 20} MiB messages ({n * sent >> 20} MiB sent) in {took:.1f} s"
    finally:
        await _close_all(streams)


async def honest_latency(address: str, timeout: float = 15.0) -> float:
    """Seconds an honest client needs to dial `address` and get a ping answered; raises if it cannot."""
    start = time.monotonic()
    with trio.fail_after(timeout):
        conn = await dial(address, bytes(PrivateKey.generate()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            await conn.call("ping", {}, timeout=timeout)
            await conn.aclose()
    return time.monotonic() - start


async def report(target: str, address: str) -> list[str]:
    """Run every attack against `address`; one line per attack."""
    lines = []
    attacks = [
        ("silent TCP flood", silent_connections(address, 520)),
        ("throwaway-key handshake flood", throwaway_handshakes(address, 520)),
        ("unfinished 4 MiB messages", unfinished_messages(address, 50)),
    ]
    for name, attack in attacks:
        async with attack as cost:
            try:
                seen = f"honest dial+ping {await honest_latency(address):.2f} s"
            except (TransportError, OSError, trio.TooSlowError) as exc:
                seen = f"honest client FAILED: {type(exc).__name__}: {exc}"
        lines.append(f"{target}: {name}: attacker {cost}; {seen}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.attack.flood", description=__doc__.splitlines()[0])
    parser.add_argument("--peer", help="storage peer to attack (default: start a local grid)")
    parser.add_argument("--coordinator", help="coordinator to attack")
    args = parser.parse_args(argv)
    targets = [(name, a) for name, a in (("peer", args.peer), ("coordinator", args.coordinator)) if a]
    grid = None
    if not targets:
        from pluto_fs.grid.localgrid import LocalGrid

        grid = LocalGrid(Path(tempfile.mkdtemp(prefix="pluto-flood-")), peers=1).start()
        assert grid.coordinator is not None
        targets = [("peer", grid.storage[0].address), ("coordinator", grid.coordinator.address)]
    try:
        for name, address in targets:
            for line in trio.run(report, name, address):
                print(line, flush=True)
    finally:
        if grid is not None:
            grid.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
