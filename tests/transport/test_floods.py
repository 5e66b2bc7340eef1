"""Floods from one source leave real clients served (docs/TRANSPORT.md "Floods").

Each attack holds its connections while an honest client dials and pings;
the honest client must be answered within HONEST_BOUND. Against real
processes (a coordinator and one storage peer, default limits) for the
connection floods; in-process with shrunken limits for the memory budget,
so the accounted figure can be read.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from nacl.public import PrivateKey

from pluto_fs.grid.localgrid import LocalGrid
from tools.attack.flood import (
    honest_latency,
    silent_connections,
    start_message,
    throwaway_handshakes,
    unfinished_messages,
)
from transport.protocol.gate import Gate
from transport.protocol.limits import CONNECTIONS_MAX, HANDSHAKES_MAX, ServerLimits
from transport.protocol.noise_channel import handshake
from transport.protocol.rpc import CallContext
from transport.protocol.server import RpcService, serve_rpc
from transport.protocol.wire import Map

HONEST_BOUND = 3.0  # seconds for an honest dial + ping during a flood (unloaded: ~0.02 s)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGrid]:
    with LocalGrid(tmp_path_factory.mktemp("floods"), peers=1) as g:
        yield g


def _targets(grid: LocalGrid) -> dict[str, str]:
    assert grid.coordinator is not None
    return {"peer": grid.storage[0].address, "coordinator": grid.coordinator.address}


@pytest.mark.parametrize("target", ["peer", "coordinator"])
def test_silent_tcp_flood_leaves_honest_clients_served(grid: LocalGrid, target: str) -> None:
    """More silent TCP connections than every slot: the oldest half-open ones give way."""
    address = _targets(grid)[target]

    async def main() -> float:
        async with silent_connections(address, CONNECTIONS_MAX + HANDSHAKES_MAX):
            return await honest_latency(address)

    assert trio.run(main) < HONEST_BOUND


@pytest.mark.parametrize("target", ["peer", "coordinator"])
def test_throwaway_key_flood_leaves_honest_clients_served(grid: LocalGrid, target: str) -> None:
    """Every connection slot taken by idle authenticated strangers: a never-used one gives way."""
    address = _targets(grid)[target]

    async def main() -> float:
        async with throwaway_handshakes(address, CONNECTIONS_MAX + 8):
            return await honest_latency(address)

    assert trio.run(main) < HONEST_BOUND


class Pinger(RpcService):
    async def rpc_ping(self, ctx: CallContext, args: Map) -> str:
        return "pong"


async def _serve(nursery: trio.Nursery, gate: Gate) -> str:
    listeners = await nursery.start(lambda task_status: serve_rpc(
        Pinger(), bytes(PrivateKey.generate()), "127.0.0.1", 0, gate=gate, task_status=task_status))
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


def test_unfinished_messages_stay_within_the_buffer_budget() -> None:
    """Twelve 1 MiB halves of 4 MiB messages against an 8 MiB budget: the biggest holders are dropped."""
    limits = ServerLimits(buffered_bytes_max=8 << 20)
    gate = Gate(limits)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, gate)
            async with unfinished_messages(address, 12, announced=4 << 20, sent=1 << 20):
                await trio.sleep(0.3)  # let the server read what was sent
                latency = await honest_latency(address)
                stats = gate.stats()
            nursery.cancel_scope.cancel()
        assert stats["dropped_for_memory"] >= 4
        assert stats["buffered_peak"] <= limits.buffered_bytes_max
        assert stats["buffered_bytes"] <= limits.buffered_bytes_max
        return latency

    assert trio.run(main) < HONEST_BOUND


def test_a_message_is_not_preallocated() -> None:
    """A header announcing 4 MiB costs only the bytes that actually came."""
    gate = Gate()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, gate)
            host, port = address.split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            channel = await handshake(stream, bytes(PrivateKey.generate()), initiator=True)
            await start_message(channel, 4 << 20, 1000)
            await trio.sleep(0.3)
            assert 0 < gate.stats()["buffered_bytes"] < 64 << 10
            await stream.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_handshake_share_per_address_is_recycled() -> None:
    """One address holds at most its share of handshake slots; the newest (honest) handshake wins."""
    gate = Gate(ServerLimits(handshakes_max=8, handshakes_per_ip=4))

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, gate)
            async with silent_connections(address, 40):
                await trio.sleep(0.2)
                assert gate.stats()["handshaking"] <= 4
                latency = await honest_latency(address)
                assert gate.stats()["dropped_handshakes"] >= 36
            nursery.cancel_scope.cancel()
        return latency

    assert trio.run(main) < HONEST_BOUND


def test_pool_drops_never_used_connections_first() -> None:
    """A full connection pool lets the newcomer in and drops an idle stranger, not an active client."""
    gate = Gate(ServerLimits(connections_max=16))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            address = await _serve(nursery, gate)
            from transport.protocol.dial import dial

            active = await dial(address, bytes(PrivateKey.generate()))
            nursery.start_soon(active.serve)
            assert await active.call("ping") == "pong"
            async with throwaway_handshakes(address, 40):
                await trio.sleep(0.2)
                assert gate.stats()["connections"] <= 16
                assert await active.call("ping") == "pong"  # still served on the same connection
                assert await honest_latency(address) < HONEST_BOUND
            await active.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
