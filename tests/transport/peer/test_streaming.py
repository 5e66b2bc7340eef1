"""Streamed uploads: the hand-built stream framing, temp files, group-committed directory fsyncs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import cbor2
import pytest
import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from cryptree.merkle import merkle_root
from cryptree.slot import sign_slot
from transport.errors import RemoteError
from transport.peer.client import StoragePeerClient
from transport.peer.durable_files import DirSyncer
from transport.peer.fragment_store import FragmentStore
from transport.peer.service import PeerConfig, run_storage_peer
from transport.protocol import wire
from transport.protocol.pool import open_pool
from transport.protocol.rpc import _decode_piece, _piece_header


@pytest.mark.parametrize("call_id", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 65535, 65536, 256 * 1024])
def test_piece_header_is_what_cbor2_encodes(call_id: int, length: int) -> None:
    data = os.urandom(length)
    for kind in (wire.UP_DATA, wire.DOWN_DATA):
        encoded = cbor2.dumps([kind, call_id, data])
        assert _piece_header(kind, call_id, length) + data == encoded
        fast = _decode_piece(bytearray(encoded))
        assert fast is not None
        assert (fast.kind, fast.id, bytes(fast.data)) == (kind, call_id, data)
        assert wire.decode(encoded) == wire.Message(kind, call_id, data=data)


@pytest.mark.parametrize(
    "raw",
    [
        cbor2.dumps([wire.UP_DATA, 1, b"abc"]) + b"x",  # trailing byte
        cbor2.dumps([wire.UP_DATA, 1, b"abc"])[:-1],  # truncated data
        cbor2.dumps([wire.UP_DATA, 1, "abc"]),  # text, not bytes
        cbor2.dumps([wire.UP_DATA, -1, b"abc"]),  # negative id
        cbor2.dumps([wire.UP_DATA, 2**64 - 1, b"abc"]),  # id over the limit
        cbor2.dumps([wire.UP_END, 1, b"abc"]),  # not a data kind
        cbor2.dumps([wire.UP_DATA, 1, b"abc", 0]),  # 4 fields
        b"\x83\x03\x01\x5f\x41a\xff",  # indefinite-length byte string
        b"\x83\x03\x1c\x41a",  # reserved additional info
    ],
)
def test_piece_fast_path_leaves_anything_unusual_to_the_strict_decoder(raw: bytes) -> None:
    assert _decode_piece(bytearray(raw)) is None


def test_dir_syncer_batches_and_reports_errors(tmp_path: Path) -> None:
    syncer = DirSyncer()
    dirs = [tmp_path / f"d{i}" for i in range(8)]
    for d in dirs:
        d.mkdir()
    errors: list[BaseException] = []

    def worker(d: Path) -> None:
        try:
            for _ in range(20):
                syncer.sync(d)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert syncer._done == syncer._next - 1  # every batch finished, none left running
    with pytest.raises(OSError):
        syncer.sync(tmp_path / "missing")  # the failing batch's caller sees the error
    syncer.sync(dirs[0])  # and the syncer still works afterwards


async def _serve(tmp: Path, fn) -> None:
    cfg = PeerConfig(tmp, 256 << 20, "127.0.0.1", 0, None)
    async with trio.open_nursery() as nursery:
        _, address = await nursery.start(run_storage_peer, cfg)
        async with open_pool(bytes(PrivateKey.generate())) as pool:
            await fn(pool, address)
        nursery.cancel_scope.cancel()


def _pieces(data: bytes, size: int = 256 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_aborted_upload_leaves_no_temp_file_and_no_charge(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    fid = merkle_root(data)

    async def body(pool, address) -> None:
        conn = await pool.get(address)
        client = StoragePeerClient(conn, timeout=10)
        # Truncated: the stream ends before the announced size.
        with pytest.raises(RemoteError) as err:
            await conn.call_upload("put_fragment", {"id": fid, "size": len(data)}, _pieces(data[:-1]), 10)
        assert err.value.code == "bad_content"
        # Aborted: the client goes away half-way through the stream.
        async with trio.open_nursery() as nursery:

            async def half_then_hang():
                def pieces():
                    yield from _pieces(data)[:6]
                    nursery.cancel_scope.cancel()  # the uploader is cancelled mid-stream...
                    yield b""

                await conn.call_upload("put_fragment", {"id": fid, "size": len(data)}, pieces(), 10)

            nursery.start_soon(half_then_hang)
        # ...which breaks the connection (a half-sent message); the peer drops the upload.
        with trio.fail_after(10):
            # Polled: the upload file belongs to another process, which signals nothing.
            while list((tmp_path / "tmp").iterdir()):  # noqa: ASYNC110
                await trio.sleep(0.05)
        client = StoragePeerClient(await pool.get(address), timeout=10)
        assert not await client.has_fragment(fid)
        assert (await client.usage())["used"] == 0
        assert await client.put_fragment(fid, data) is True  # an honest retry is stored
        assert await client.get_fragment(fid) == data
        assert (await client.usage())["client_used"] == len(data)

    await _serve(tmp_path, body)
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_restart_removes_stale_temp_files(tmp_path: Path) -> None:
    FragmentStore(tmp_path, 1 << 30).close()
    stale = tmp_path / "tmp" / "up-killed-mid-upload"
    stale.write_bytes(os.urandom(100_000))
    (tmp_path / "tmp" / "nested").mkdir()
    store = FragmentStore(tmp_path, 1 << 30)
    try:
        assert list((tmp_path / "tmp").iterdir()) == []
        assert store.usage(b"x").used == 0
    finally:
        store.close()


async def test_running_totals_match_the_index(tmp_path: Path) -> None:
    blobs = [os.urandom(n) for n in (10_000, 70_000, 300_000)]

    async def body(pool, address) -> None:
        a = StoragePeerClient(await pool.get(address), timeout=10)
        async with open_pool(bytes(PrivateKey.generate())) as other_pool:
            b = StoragePeerClient(await other_pool.get(address), timeout=10)
            for blob in blobs:
                await a.put_fragment(merkle_root(blob), blob)
            await b.put_fragment(merkle_root(blobs[0]), blobs[0])  # shared: stored once, charged to both
            use_a, use_b = await a.usage(), await b.usage()
            assert use_a["used"] == sum(map(len, blobs))
            assert use_a["client_used"] == sum(map(len, blobs))
            assert use_b["client_used"] == len(blobs[0])
            await a.delete_fragment(merkle_root(blobs[0]))  # b still claims it: the bytes stay
            assert (await a.usage())["used"] == sum(map(len, blobs))
            await b.delete_fragment(merkle_root(blobs[0]))
            assert (await b.usage())["used"] == sum(map(len, blobs[1:]))
            assert (await b.usage())["client_used"] == 0
            # A slot counts for whoever stored its latest version.
            await a.put_slot(sign_slot(writer, 1, b"x" * 1000))
            assert (await a.usage())["client_used"] == sum(map(len, blobs[1:])) + 1000
            await b.put_slot(sign_slot(writer, 2, b"y" * 400))
            assert (await a.usage())["client_used"] == sum(map(len, blobs[1:]))
            assert (await b.usage())["client_used"] == 400
            assert (await b.usage())["used"] == sum(map(len, blobs[1:])) + 400

    writer = SigningKey.generate()
    await _serve(tmp_path, body)
    store = FragmentStore(tmp_path, 1 << 30)  # a restart sums the index: the same figures
    try:
        assert store.usage(b"").used == sum(map(len, blobs[1:])) + 400
    finally:
        store.close()
