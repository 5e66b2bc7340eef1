"""Hostile input against a real storage peer process.

Each attack must end in a refusal or a closed connection; the peer keeps
serving an honest client, and nothing it stores changes.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from cryptree.merkle import merkle_root
from cryptree.slot import SignedSlot, sign_slot
from pluto_fs.grid.localgrid import GridProcess
from transport.errors import RemoteError
from transport.peer.client import StoragePeerClient
from transport.protocol.dial import dial
from transport.protocol.noise_channel import handshake

CLOSE_WAIT = 8.0  # seconds we give the peer to drop a bad connection


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GridProcess]:
    root = tmp_path_factory.mktemp("hostile")
    proc = GridProcess(
        "peer",
        [sys.executable, "-m", "pluto_fs.cli.main", "--log-level", "info", "serve", "--store", str(root / "store"),
         "--capacity", "100M", "--listen", "127.0.0.1:0", "--handshake-timeout", "2"],
        root / "peer.log",
    )
    proc.start()
    proc.store = root / "store"  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def _snapshot(store: Path) -> dict[str, str]:
    """Digest of every stored fragment and of the slot table."""
    import sqlite3

    out = {}
    for f in sorted((store / "fragments").rglob("*")):
        if f.is_file():
            out[str(f.relative_to(store))] = hashlib.sha256(f.read_bytes()).hexdigest()
    db = sqlite3.connect(store / "index.sqlite")
    try:
        out["slots"] = repr(db.execute("SELECT writer, seq, payload, signature FROM slots ORDER BY writer").fetchall())
        out["claims"] = repr(db.execute("SELECT id, size FROM claims ORDER BY id").fetchall())
    finally:
        db.close()
    return out


async def _honest_round_trip(address: str) -> None:
    """An honest client can still store and read back."""
    data = os.urandom(70_000)
    fid = merkle_root(data)
    conn = await dial(address, bytes(PrivateKey.generate()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.serve)
        client = StoragePeerClient(conn, timeout=10)
        await client.put_fragment(fid, data)
        assert await client.get_fragment(fid) == data
        await conn.aclose()


async def _closed_by_peer(stream: trio.SocketStream) -> bool:
    """True if the peer closes the connection within CLOSE_WAIT, draining anything it sends."""
    with trio.move_on_after(CLOSE_WAIT):
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return True
    return False


async def _raw(address: str) -> trio.SocketStream:
    host, port = address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def _established(address: str):
    stream = await _raw(address)
    channel = await handshake(stream, bytes(PrivateKey.generate()), initiator=True)
    return stream, channel


def _attack_then_check(peer: GridProcess, attack, setup=None) -> None:
    """Run `setup` (honest writes), snapshot the store, run `attack`, then prove nothing changed."""
    if setup is not None:
        trio.run(setup, peer.address)
    before = _snapshot(peer.store)

    async def main() -> None:
        await attack(peer.address)
        await _honest_round_trip(peer.address)

    trio.run(main)
    assert peer.alive(), "the peer process died"
    after = _snapshot(peer.store)
    assert after["slots"] == before["slots"]
    for key, value in before.items():
        if key.startswith("fragments/"):
            assert after[key] == value, f"{key} changed"


def test_garbage_bytes_close_the_connection(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        stream = await _raw(address)
        await stream.send_all(os.urandom(4096))
        assert await _closed_by_peer(stream)

    _attack_then_check(peer, attack)


def test_truncated_handshake_is_dropped_without_blocking_others(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        stream = await _raw(address)
        await stream.send_all(struct.pack(">H", 32) + os.urandom(10))  # promises 32 bytes, sends 10
        await _honest_round_trip(address)  # served while the half-open handshake waits
        assert await _closed_by_peer(stream)  # then dropped by the handshake timeout

    _attack_then_check(peer, attack)


def test_oversized_handshake_message_is_refused(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        stream = await _raw(address)
        await stream.send_all(struct.pack(">H", 65535) + os.urandom(65535))
        assert await _closed_by_peer(stream)

    _attack_then_check(peer, attack)


def test_oversized_message_closes_the_connection(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        stream, channel = await _established(address)
        # a genuine encrypted frame whose message header announces 100 MiB
        ct = channel._enc.encrypt_with_ad(None, struct.pack(">I", 100 << 20) + b"x" * 100)
        await stream.send_all(len(ct).to_bytes(2, "big") + ct)
        assert await _closed_by_peer(stream)

    _attack_then_check(peer, attack)


def test_forged_frame_closes_the_connection(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        stream, _channel = await _established(address)
        await stream.send_all(struct.pack(">H", 200) + os.urandom(200))  # fails its AEAD tag
        assert await _closed_by_peer(stream)

    _attack_then_check(peer, attack)


def test_malformed_cbor_closes_the_connection(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        for bad in [b"\xff\xfe\xfd", b"\x9f" * 2000, b"\x84\x00\x01\x63abc\xa1\x01\x02", b"\x83\x09\x01\x40"]:
            stream, channel = await _established(address)
            await channel.send_message(bad)
            assert await _closed_by_peer(stream)

    _attack_then_check(peer, attack)


def test_bad_requests_are_refused_and_the_connection_survives(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        conn = await dial(address, bytes(PrivateKey.generate()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            for method, args in [
                ("put_slot", {"writer": b"short", "seq": 1, "payload": b"", "signature": b"x" * 64}),
                ("get_fragment", {"id": "not bytes"}),
                ("challenge", {"id": os.urandom(32), "leaf": -1}),
                ("no_such_method", {}),
            ]:
                with pytest.raises(RemoteError) as err:
                    await conn.call(method, args, timeout=10)
                assert err.value.code in ("bad_request", "unknown_method")
            assert isinstance(await conn.call("ping", {}, timeout=10), dict)
            await conn.aclose()

    _attack_then_check(peer, attack)


def test_bad_signature_and_replayed_slot_change_nothing(peer: GridProcess) -> None:
    key = SigningKey.generate()
    old, new = sign_slot(key, 5, b"old"), sign_slot(key, 6, b"new")

    async def client_session(address: str, body) -> None:
        conn = await dial(address, bytes(PrivateKey.generate()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            await body(StoragePeerClient(conn, timeout=10))
            await conn.aclose()

    async def setup(address: str) -> None:
        async def body(client: StoragePeerClient) -> None:
            await client.put_slot(old)
            await client.put_slot(new)

        await client_session(address, body)

    async def attack(address: str) -> None:
        async def body(client: StoragePeerClient) -> None:
            with pytest.raises(RemoteError) as err:
                await client.put_slot(old)  # replay of an older version
            assert err.value.code == "stale_seq"
            with pytest.raises(RemoteError) as err:
                await client.put_slot(SignedSlot(new.writer, 7, b"evil", new.signature))
            assert err.value.code == "bad_signature"
            # a valid signature by another key, claimed for this writer's address
            thief = sign_slot(SigningKey.generate(), 8, b"evil")
            with pytest.raises(RemoteError) as err:
                await client.put_slot(SignedSlot(new.writer, 8, b"evil", thief.signature))
            assert err.value.code == "bad_signature"
            assert await client.get_slot(new.writer) == new

        await client_session(address, body)

    _attack_then_check(peer, attack, setup)


def test_fragment_with_wrong_id_is_not_stored(peer: GridProcess) -> None:
    async def attack(address: str) -> None:
        conn = await dial(address, bytes(PrivateKey.generate()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            client = StoragePeerClient(conn, timeout=10)
            data = os.urandom(300_000)
            claimed = os.urandom(32)
            with pytest.raises(RemoteError) as err:
                await client.put_fragment(claimed, data)
            assert err.value.code == "bad_content"
            assert not await client.has_fragment(claimed)
            await conn.aclose()

    _attack_then_check(peer, attack)
    assert list((peer.store / "tmp").iterdir()) == []
