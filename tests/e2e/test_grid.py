"""One coordinator and five storage peers as real processes, a client on loopback."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from cryptree.merkle import merkle_root
from cryptree.slot import sign_slot
from pluto_fs.grid.localgrid import LocalGrid
from transport.coordinator.client import CoordinatorClient
from transport.peer.client import StoragePeerClient
from transport.protocol.peer_id import parse_peer_id
from transport.protocol.pool import open_pool


async def _wait_for_peers(coordinator: CoordinatorClient, n: int) -> list:
    with trio.fail_after(20):
        while True:
            peers = await coordinator.find_peers(n)
            if len(peers) >= n:
                return peers
            await trio.sleep(0.2)


def test_fifty_fragments_survive_a_restart_of_every_process(grid: LocalGrid) -> None:
    key = bytes(PrivateKey.generate())
    fragments = [os.urandom(size) for size in [0, 1, 16 * 1024, 300_000] + [50_000 + 9_973 * i for i in range(46)]]
    placed: dict[bytes, bytes] = {}  # fragment id -> peer id

    async def store() -> None:
        async with open_pool(key) as pool:
            coordinator = CoordinatorClient.from_pool(pool, grid.coordinator.address)
            peers = await _wait_for_peers(coordinator, 5)
            assert {p.id for p in peers} == {parse_peer_id(g.peer_id) for g in grid.storage}

            async def put(i: int, data: bytes) -> None:
                peer = peers[i % len(peers)]
                client = StoragePeerClient(await pool.get(peer.address, peer.id))
                fid = merkle_root(data)
                await client.put_fragment(fid, data)
                placed[fid] = peer.id

            async with trio.open_nursery() as nursery:
                for i, data in enumerate(fragments):
                    nursery.start_soon(put, i, data)

    async def read_back() -> None:
        async with open_pool(key) as pool:
            coordinator = CoordinatorClient.from_pool(pool, grid.coordinator.address)
            await _wait_for_peers(coordinator, 5)
            for data in fragments:
                fid = merkle_root(data)
                where = await coordinator.lookup_peer(placed[fid])
                assert where is not None and where.alive
                client = StoragePeerClient(await pool.get(where.address, placed[fid]))
                assert await client.get_fragment(fid) == data

    trio.run(store)
    assert len(placed) == 50
    trio.run(read_back)
    grid.restart_all()
    trio.run(read_back)


def test_stores_hold_no_plaintext_and_no_client_metadata(grid: LocalGrid) -> None:
    """Clients seal data before it leaves; the network layer adds no names or metadata."""
    marker = b"PLUTO-PLAINTEXT-MARKER-7f3a"
    file_name = "holiday-photos-secret.jpg"
    sealing_key = AESGCM.generate_key(bit_length=256)
    client_key = PrivateKey.generate()
    writer = SigningKey.generate()

    def seal(plain: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(sealing_key).encrypt(nonce, plain, None)

    async def main() -> None:
        async with open_pool(bytes(client_key)) as pool:
            coordinator = CoordinatorClient.from_pool(pool, grid.coordinator.address)
            peers = await _wait_for_peers(coordinator, 5)
            for i, peer in enumerate(peers):
                client = StoragePeerClient(await pool.get(peer.address, peer.id))
                sealed = seal(marker * 1000 + file_name.encode() + bytes([i]))
                await client.put_fragment(merkle_root(sealed), sealed)
                await client.put_slot(sign_slot(writer, 1, seal(file_name.encode() + marker)))
                await client.challenge(merkle_root(sealed), 0, len(sealed))

    trio.run(main)
    grid.stop()  # flush everything to disk the way a crash would find it
    forbidden = [marker, file_name.encode(), marker.hex().encode()]
    scanned = 0
    for root in [grid.root / "coordinator"] + [grid.root / f"peer{i}" for i in range(5)]:
        for path in Path(root).rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                scanned += len(blob)
                for needle in forbidden:
                    assert needle not in blob, f"{needle!r} found in {path}"
        db = Path(root) / "index.sqlite"
        if db.exists():
            conn = sqlite3.connect(db)
            cols = {row[1] for table in ("fragments", "claims", "slots")
                    for row in conn.execute(f"PRAGMA table_info({table})")}
            conn.close()
            # only ids, sizes, client keys and slot contents: no names, paths, addresses or times
            assert cols == {"id", "size", "client", "writer", "seq", "payload", "signature"}
    assert scanned > 5 * 27_000
