"""Storage peer in-process: fragments, slots, quotas, challenges, crash leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from cryptree.merkle import LEAF_SIZE, merkle_root
from cryptree.slot import SignedSlot, sign_slot
from transport.errors import RemoteError
from transport.peer.client import StoragePeerClient
from transport.peer.service import PeerConfig, run_storage_peer
from transport.protocol.pool import open_pool


async def _with_peer(tmp: Path, fn, capacity: int = 64 << 20, client_quota: int | None = None) -> None:
    cfg = PeerConfig(tmp, capacity, "127.0.0.1", 0, None, client_quota=client_quota)
    async with trio.open_nursery() as nursery:
        _, address = await nursery.start(run_storage_peer, cfg)
        async with open_pool(bytes(PrivateKey.generate())) as pool:
            client = StoragePeerClient(await pool.get(address), timeout=10)
            await fn(client, pool, address)
        nursery.cancel_scope.cancel()


async def test_fragment_round_trip_and_challenge(tmp_path: Path) -> None:
    data = os.urandom(5 * LEAF_SIZE + 123)
    fid = merkle_root(data)

    async def body(client: StoragePeerClient, pool, address) -> None:
        assert await client.put_fragment(fid, data) is True
        assert await client.put_fragment(fid, data) is False  # already held: not stored twice
        assert await client.get_fragment(fid) == data
        assert await client.has_fragment(fid)
        for leaf in range(6):
            assert await client.challenge(fid, leaf, len(data))
        with pytest.raises(RemoteError) as err:
            await client.get_fragment(os.urandom(32))
        assert err.value.code == "not_found"

    await _with_peer(tmp_path, body)


async def test_fragment_not_matching_its_id_is_refused(tmp_path: Path) -> None:
    data = os.urandom(100_000)

    async def body(client: StoragePeerClient, pool, address) -> None:
        wrong = merkle_root(data[:-1] + b"x")
        with pytest.raises(RemoteError) as err:
            await client.put_fragment(wrong, data)
        assert err.value.code == "bad_content"
        assert not await client.has_fragment(wrong)
        # announcing a size and sending more is refused too
        with pytest.raises(RemoteError):
            await client.conn.call_upload("put_fragment", {"id": merkle_root(data), "size": 10}, [data], 10)
        assert (await client.usage())["used"] == 0

    await _with_peer(tmp_path, body)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert all(not list(d.iterdir()) for d in (tmp_path / "fragments").iterdir())


async def test_quota_and_capacity_refusals(tmp_path: Path) -> None:
    a = os.urandom(600_000)
    b = os.urandom(600_000)

    async def body(client: StoragePeerClient, pool, address) -> None:
        await client.put_fragment(merkle_root(a), a)
        with pytest.raises(RemoteError) as err:
            await client.put_fragment(merkle_root(b), b)
        assert err.value.code == "quota"
        other = StoragePeerClient(await pool.get(address), timeout=10)
        assert (await other.usage())["client_used"] == 600_000
        assert await client.get_fragment(merkle_root(a)) == a  # the refusal lost nothing

    await _with_peer(tmp_path, body, capacity=10 << 20, client_quota=1_000_000)


async def test_slots_need_signature_and_increasing_seq(tmp_path: Path) -> None:
    key = SigningKey.generate()

    async def body(client: StoragePeerClient, pool, address) -> None:
        v1 = sign_slot(key, 1, b"sealed-v1")
        v2 = sign_slot(key, 2, b"sealed-v2")
        await client.put_slot(v1)
        await client.put_slot(v2)
        for bad, code in [
            (v1, "stale_seq"),  # replay of an old version
            (SignedSlot(v2.writer, 3, b"forged", v2.signature), "bad_signature"),
            (SignedSlot(v2.writer, 2, v2.payload, v2.signature), "stale_seq"),
        ]:
            with pytest.raises(RemoteError) as err:
                await client.put_slot(bad)
            assert err.value.code == code
        got = await client.get_slot(v2.writer)
        assert got == v2
        assert await client.get_slot(bytes(SigningKey.generate().verify_key)) is None

    await _with_peer(tmp_path, body)


async def test_restart_reconciles_the_index_with_the_fragment_files(tmp_path: Path) -> None:
    data = os.urandom(1000)
    fid = merkle_root(data)
    lost = os.urandom(5000)
    lost_id = merkle_root(lost)

    async def store(client, pool, address) -> None:
        await client.put_fragment(fid, data)
        await client.put_fragment(lost_id, lost)

    await _with_peer(tmp_path, store)
    # A crash can lose the index commit of an acknowledged fragment (the file itself was
    # fsync'd before the rename): simulate by deleting its row.
    import sqlite3

    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.execute("DELETE FROM claims WHERE id=?", (lost_id,))
    db.execute("DELETE FROM fragments WHERE id=?", (lost_id,))
    db.commit()
    db.close()
    # junk under a fragment-like name, and an upload cut short in tmp/
    bogus = tmp_path / "fragments" / "ff" / ("ff" * 32)
    bogus.parent.mkdir(exist_ok=True)
    bogus.write_bytes(b"half")
    (tmp_path / "tmp" / "up-crashed").write_bytes(b"partial")

    async def check(client, pool, address) -> None:
        assert await client.get_fragment(fid) == data
        assert await client.get_fragment(lost_id) == lost  # re-indexed from its file
        assert not await client.has_fragment(bytes.fromhex("ff" * 32))

    await _with_peer(tmp_path, check)
    assert not bogus.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_a_put_replaces_a_corrupt_copy_of_the_same_fragment(tmp_path: Path) -> None:
    data = os.urandom(3 * LEAF_SIZE + 77)
    fid = merkle_root(data)
    path = tmp_path / "fragments" / fid.hex()[:2] / fid.hex()

    async def body(client: StoragePeerClient, pool, address) -> None:
        assert await client.put_fragment(fid, data) is True
        rotten = bytearray(path.read_bytes())
        for i in range(0, len(rotten), LEAF_SIZE):
            rotten[i] ^= 0xFF  # bit rot in every leaf: no challenge can pass
        path.write_bytes(bytes(rotten))
        assert not await client.challenge(fid, 0, len(data))
        # A repair sends the same fragment again: the verified upload must replace the bad file.
        assert await client.put_fragment(fid, data) is True
        assert path.read_bytes() == data
        for leaf in range(4):
            assert await client.challenge(fid, leaf, len(data))
        assert await client.get_fragment(fid) == data
        assert (await client.usage())["used"] == len(data)  # replaced, not counted twice
        assert await client.put_fragment(fid, data) is False  # an intact copy is kept as it is

    await _with_peer(tmp_path, body)
    assert list((tmp_path / "tmp").iterdir()) == []
