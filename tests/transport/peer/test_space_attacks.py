"""Attacks on a storage peer's space (docs/TRUST.md, "Attacks on a storage peer's space").

In-process peers on loopback with a short upload step deadline, so a
stalled upload is cancelled within seconds instead of a minute.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import trio
from nacl.public import PrivateKey

from cryptree.merkle import merkle_root
from tools.attack.space import race_puts, trickle_attack
from transport.coordinator.client import CoordinatorClient
from transport.coordinator.limits import CoordinatorLimits
from transport.coordinator.service import run_coordinator
from transport.peer.client import StoragePeerClient
from transport.peer.limits import UPLOADS_PER_CLIENT_MAX
from transport.peer.service import PeerConfig, run_storage_peer
from transport.protocol.pool import open_pool

MIB = 1 << 20
STEP_DEADLINE = 2.0


async def test_announced_uploads_that_trickle_hold_no_space_and_are_cancelled(tmp_path: Path) -> None:
    capacity = 256 * MIB  # four 64 MiB announcements would have filled it
    cfg = PeerConfig(tmp_path, capacity, "127.0.0.1", 0, None, upload_step_deadline=STEP_DEADLINE)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, address = await nursery.start(run_storage_peer, cfg)
            async with open_pool(bytes(PrivateKey.generate())) as attacker, open_pool(
                bytes(PrivateKey.generate())
            ) as honest_pool:
                honest = StoragePeerClient(await honest_pool.get(address), timeout=10)
                outcome: dict[str, object] = {}

                async def attack() -> None:
                    conn = await attacker.get(address)
                    start = trio.current_time()
                    outcome["ends"] = await trickle_attack(conn, 40, 64 * MIB, 0.5, 20.0)
                    outcome["took"] = trio.current_time() - start

                async with trio.open_nursery() as inner:
                    inner.start_soon(attack)
                    await trio.sleep(1.0)  # every request is in and trickling
                    during = await honest.usage()
                    data = os.urandom(MIB)
                    assert await honest.put_fragment(merkle_root(data), data) is True
                ends = outcome["ends"]
                # Free space is intact but for the few bytes that really arrived.
                assert during["free"] >= capacity - 4096, during
                # The client's in-flight cap refused the rest at once; the trickles were cancelled
                # at the step deadline (with slack for a loaded machine), each releasing its space.
                assert ends["busy"] == 40 - UPLOADS_PER_CLIENT_MAX, ends
                assert ends["timeout"] == UPLOADS_PER_CLIENT_MAX, ends
                assert outcome["took"] < STEP_DEADLINE + 3.0, outcome
                after = await honest.usage()
                assert after["used"] == MIB and after["free"] == capacity - MIB
            nursery.cancel_scope.cancel()
    assert list((tmp_path / "tmp").iterdir()) == []  # no half upload left behind


async def test_concurrent_puts_from_one_key_cannot_pass_its_allowance(tmp_path: Path) -> None:
    allowance = 30 * MIB
    limits = CoordinatorLimits(exchange_grace=allowance)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(run_coordinator, tmp_path / "coord", "127.0.0.1", 0, heartbeat_interval=0.5, limits=limits)
            )
            coordinator = f"{host}:{port}"
            cfg = PeerConfig(tmp_path / "peer", 256 * MIB, "127.0.0.1", 0, coordinator, heartbeat_interval=0.5)
            _, address = await nursery.start(run_storage_peer, cfg)
            async with open_pool(bytes(PrivateKey.generate())) as pool:
                registry = CoordinatorClient.from_pool(pool, coordinator)
                for _ in range(100):
                    if await registry.list_peers():
                        break
                    await trio.sleep(0.1)
                await trio.sleep(0.5)  # the peer has its coordinator client once register() returned
                fresh = StoragePeerClient(await pool.get(address), timeout=10)
                ends = await race_puts(fresh, 60, MIB)
                assert (ends["stored"], ends["quota"]) == (30, 30), ends
                assert (await fresh.usage())["client_used"] == allowance
            nursery.cancel_scope.cancel()
