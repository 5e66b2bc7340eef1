"""Attacks on a storage peer's space, run against a local grid.

1. Announce-and-trickle: one connection opens 40 `put_fragment` requests
   announcing 64 MiB each and sends one byte every few seconds; meanwhile an
   honest client asks the peer how much is free and stores a fragment.
2. Quota race: a fresh key (its allowance is the coordinator's grace) sends
   60 concurrent 1 MiB `put_fragment` requests, retrying "busy" refusals;
   what got stored is compared with the allowance.

Each prints one line: what was tried, what it cost the attacker, what the
honest client saw. docs/TRUST.md, "Attacks on a storage peer's space",
describes the defences. Usage: python -m tools.attack.space [--trickle S]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from pathlib import Path

import trio
from nacl.public import PrivateKey

from cryptree.merkle import merkle_root
from pluto_fs.grid.localgrid import LocalGrid
from transport.coordinator.client import CoordinatorClient
from transport.errors import RemoteError, TransportError
from transport.peer.client import StoragePeerClient
from transport.protocol import wire
from transport.protocol.pool import PeerPool, open_pool
from transport.protocol.rpc import RpcConnection, _piece_header

MIB = 1 << 20


async def trickle_put(conn: RpcConnection, size: int, every: float, give_up: float) -> tuple[str, int]:
    """Announce a `size`-byte fragment, then send one byte every `every` s until the peer answers.

    Returns how it ended (the peer's error code, "stored", "connection lost",
    or "gave up" after `give_up` s without an answer) and the bytes sent.
    Built from the connection's internals: an attacker does not use the
    polite client.
    """
    call_id, pending = conn._open_call(1)
    sent = 0
    item = None
    try:
        with trio.move_on_after(give_up):
            await conn._send(wire.request(call_id, "put_fragment", {"id": os.urandom(32), "size": size}))
            while item is None:
                try:
                    await conn._send_parts((_piece_header(wire.UP_DATA, call_id, 1), b"x"))
                except TransportError:
                    return "connection lost", sent
                sent += 1
                with trio.move_on_after(every):
                    item = await pending.receive.receive()
        if item is None:
            return "gave up", sent
        try:
            conn._final("put_fragment", *item)
        except RemoteError as exc:
            return exc.code, sent
        return "stored", sent
    finally:
        conn._close_call(call_id)


async def trickle_attack(
    conn: RpcConnection, uploads: int, size: int, every: float, give_up: float
) -> Counter[str]:
    """`uploads` trickle_put calls at once on one connection; how many ended how, and bytes sent."""
    ends: Counter[str] = Counter()

    async def one() -> None:
        end, sent = await trickle_put(conn, size, every, give_up)
        ends[end] += 1
        ends["bytes sent"] += sent

    async with trio.open_nursery() as nursery:
        for _ in range(uploads):
            nursery.start_soon(one)
    return ends


async def race_puts(client: StoragePeerClient, count: int, size: int) -> Counter[str]:
    """`count` distinct `size`-byte fragments put at once; a "busy" refusal is retried. Outcome counts."""
    ends: Counter[str] = Counter()

    async def one() -> None:
        data = os.urandom(size)
        fid = merkle_root(data)
        while True:
            try:
                await client.put_fragment(fid, data)
                ends["stored"] += 1
                return
            except RemoteError as exc:
                if exc.code != "busy":
                    ends[exc.code] += 1
                    return
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return ends


async def _registered(pool: PeerPool, coordinator: str, peers: int) -> None:
    """Wait until `peers` peers are registered with the coordinator (and have had time to notice)."""
    client = CoordinatorClient.from_pool(pool, coordinator)
    for _ in range(150):
        if len(await client.list_peers()) >= peers:
            break
        await trio.sleep(0.2)
    await trio.sleep(1.0)


async def _trickle(grid: LocalGrid, trickle: float) -> None:
    assert grid.coordinator is not None
    target = grid.storage[0].address
    async with open_pool(bytes(PrivateKey.generate())) as attacker_pool, open_pool(
        bytes(PrivateKey.generate())
    ) as honest_pool:
        await _registered(honest_pool, grid.coordinator.address, len(grid.storage))
        honest = StoragePeerClient(await honest_pool.get(target), timeout=30)
        before = await honest.usage()
        ends: Counter[str] = Counter()
        took = 0.0
        async with trio.open_nursery() as nursery:

            async def attack() -> None:
                nonlocal took
                start = trio.current_time()
                ends.update(await trickle_attack(await attacker_pool.get(target), 40, 64 * MIB, 8.0, trickle))
                took = trio.current_time() - start

            nursery.start_soon(attack)
            await trio.sleep(min(10.0, trickle / 2))
            during = await honest.usage()
            data = os.urandom(MIB)
            try:
                await honest.put_fragment(merkle_root(data), data)
                put = "1 MiB put stored"
            except RemoteError as exc:
                put = f"1 MiB put refused ({exc.code}: {exc.message})"
        after = await honest.usage()
        sent = ends.pop("bytes sent", 0)
        print(
            f"trickle: 40 puts announcing 64 MiB on one connection, 1 byte / 8 s for up to {trickle:g} s | "
            f"attacker cost: {sent} bytes sent over {took:.0f} s, outcomes {dict(ends)} | "
            f"honest client: free {before['free'] / MIB:.1f} MiB before, {during['free'] / MIB:.1f} MiB during, "
            f"{after['free'] / MIB:.1f} MiB after; {put}"
        )


async def _race(grid: LocalGrid, grace: int) -> None:
    assert grid.coordinator is not None
    async with open_pool(bytes(PrivateKey.generate())) as pool:
        await _registered(pool, grid.coordinator.address, len(grid.storage))
        fresh = StoragePeerClient(await pool.get(grid.storage[0].address), timeout=30)
        race = await race_puts(fresh, 60, MIB)
        stored = (await fresh.usage())["client_used"]
        print(
            f"quota race: 60 concurrent 1 MiB puts from a fresh key allowed {grace / MIB:g} MiB | "
            f"attacker cost: 60 MiB sent, outcomes {dict(race)} | "
            f"peer stored {stored / MIB:g} MiB for it ({'within' if stored <= grace else 'OVER'} the allowance)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trickle", type=float, default=75.0, help="seconds the trickling attacker keeps going")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pluto-attack-") as tmp:
        # A grace above 40 x 64 MiB, so the exchange check does not stop the announcements first.
        with LocalGrid(Path(tmp) / "a", peers=1, capacity="2G", grace="4G", log_level="warning") as grid:
            trio.run(_trickle, grid, args.trickle)
        with LocalGrid(Path(tmp) / "b", peers=1, capacity="2G", grace="30M", log_level="warning") as grid:
            trio.run(_race, grid, 30 * MIB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
