"""Content-defined chunking and chunk sealing."""

from __future__ import annotations

import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptree.chunks import (
    CHUNK_FORMAT,
    DEFAULT_PARAMS,
    FLAG_ZSTD,
    MAX_SIZE,
    MIN_SIZE,
    ChunkerParams,
    StreamChunker,
    chunk_id,
    derive_chunk_key,
    hash_sealed,
    iter_chunks,
    open_chunk,
    seal_chunk,
)
from cryptree.errors import CryptreeError, DecryptionError, FormatError
from cryptree.identity import UserKeys
from cryptree.keys import AEAD_OVERHEAD, aead_seal, new_key
from cryptree.padding import pad

MIB = 1024 * 1024
SMALL = ChunkerParams(min_size=256, avg_size=1024, max_size=4096)


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


BIG = rand(20 * MIB)


def ids(mac: bytes, data: bytes, params: ChunkerParams = DEFAULT_PARAMS) -> list[bytes]:
    return [chunk_id(mac, view) for _, view in iter_chunks(data, params)]


def test_chunks_tile_the_input_within_bounds() -> None:
    chunks = list(iter_chunks(BIG))
    assert b"".join(bytes(v) for _, v in chunks) == BIG
    offsets = [off for off, _ in chunks]
    assert offsets == sorted(offsets) and offsets[0] == 0
    sizes = [len(v) for _, v in chunks]
    assert all(MIN_SIZE <= s <= MAX_SIZE for s in sizes[:-1]) and 0 < sizes[-1] <= MAX_SIZE
    assert 10 <= len(chunks) <= 30  # ~1.4 MiB mean on random data
    assert list(iter_chunks(b"")) == []
    assert [len(v) for _, v in iter_chunks(b"abc")] == [3]


def test_insertion_in_the_middle_keeps_most_chunk_ids() -> None:
    mac = new_key()
    mid = len(BIG) // 2
    edited = BIG[:mid] + b"inserted bytes!" * 7 + BIG[mid:]
    before, after = ids(mac, BIG), ids(mac, edited)
    unchanged = set(before) & set(after)
    # Only the chunk(s) around the edit change: everything before and after re-syncs.
    assert len(before) - len(unchanged) <= 2
    assert len(unchanged) >= 0.8 * len(before)


def test_user_seed_changes_cut_points_but_stays_content_defined() -> None:
    keys = UserKeys.from_seed(bytes(32))
    seeded = ChunkerParams(seed=keys.chunker_seed)
    stock = [off for off, _ in iter_chunks(BIG)]
    mine = [off for off, _ in iter_chunks(BIG, seeded)]
    assert stock != mine
    assert mine == [off for off, _ in iter_chunks(BIG, seeded)]  # deterministic


def test_memoryview_and_bytearray_inputs() -> None:
    data = rand(50_000, 1)
    expect = [(o, bytes(v)) for o, v in iter_chunks(data, SMALL)]
    assert [(o, bytes(v)) for o, v in iter_chunks(memoryview(data), SMALL)] == expect
    assert [(o, bytes(v)) for o, v in iter_chunks(bytearray(data), SMALL)] == expect


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 60_000), st.lists(st.integers(1, 9000), min_size=1, max_size=50), st.integers(0, 1000))
def test_stream_chunker_matches_whole_buffer(size: int, pieces: list[int], seed: int) -> None:
    data = rand(size, seed)
    expect = [(o, bytes(v)) for o, v in iter_chunks(data, SMALL)]
    sc, out, pos, i = StreamChunker(SMALL), [], 0, 0
    while pos < len(data):
        n = pieces[i % len(pieces)]
        out += sc.feed(data[pos : pos + n])
        pos, i = pos + n, i + 1
    out += sc.finish()
    assert out == expect


def test_params_validated() -> None:
    with pytest.raises(CryptreeError):
        ChunkerParams(min_size=2 * MIB, avg_size=MIB)
    with pytest.raises(CryptreeError):
        ChunkerParams(seed=2**63)


# ---- ids and keys -------------------------------------------------------------------------


def test_ids_dedup_within_a_user_not_across() -> None:
    a, b = UserKeys.from_seed(bytes(32)), UserKeys.from_seed(b"\x01" * 32)
    data = rand(10_000)
    assert chunk_id(a.chunk_mac_key, data) == chunk_id(a.chunk_mac_key, bytearray(data))
    assert chunk_id(a.chunk_mac_key, data) != chunk_id(b.chunk_mac_key, data)
    sa1, sa2, sb = (seal_chunk(k, data) for k in (a.chunk_mac_key, a.chunk_mac_key, b.chunk_mac_key))
    assert sa1.chunk_id == sa2.chunk_id and sa1.chunk_key == sa2.chunk_key  # dedup: same id, same key
    assert sa1.sealed != sa2.sealed  # fresh nonce each time
    assert sb.chunk_id != sa1.chunk_id and sb.chunk_key != sa1.chunk_key
    assert sa1.chunk_key == derive_chunk_key(a.chunk_mac_key, sa1.chunk_id) != sa1.chunk_id


# ---- sealing ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4000, 100_000, MIB + 3])
def test_seal_open_round_trip(size: int) -> None:
    mac = new_key()
    data = rand(size, size)
    sc = seal_chunk(mac, data)
    assert sc.length == size and sc.sealed_hash == hash_sealed(sc.sealed)
    for kwargs in ({}, {"expected_length": size, "sealed_hash": sc.sealed_hash}):
        assert open_chunk(sc.chunk_key, sc.sealed, sc.chunk_id, mac, **kwargs) == data
    # A reader without the owner's MAC key still gets verified content.
    assert open_chunk(sc.chunk_key, memoryview(sc.sealed), sc.chunk_id, sealed_hash=sc.sealed_hash) == data


def test_compression_only_when_it_helps() -> None:
    mac = new_key()
    random_chunk = seal_chunk(mac, rand(MIB))
    text_chunk = seal_chunk(mac, b"all work and no play makes jack a dull boy\n" * 20_000)
    tiny_text = seal_chunk(mac, b"a" * 3000)  # compresses, but stays in the same 4 KiB bucket
    assert not random_chunk.compressed and random_chunk.sealed[0] == CHUNK_FORMAT
    assert text_chunk.compressed and text_chunk.sealed[0] == CHUNK_FORMAT | FLAG_ZSTD
    assert len(text_chunk.sealed) < 20_000
    assert not tiny_text.compressed
    assert not seal_chunk(mac, b"a" * MIB, compress=False).compressed
    for sc, data in ((text_chunk, b"all work and no play makes jack a dull boy\n" * 20_000),):
        assert open_chunk(sc.chunk_key, sc.sealed, sc.chunk_id, mac) == data


def test_padding_hides_exact_size() -> None:
    mac = new_key()
    assert len(seal_chunk(mac, rand(10)).sealed) == len(seal_chunk(mac, rand(3000)).sealed) == 4096
    big = {len(seal_chunk(mac, rand(n)).sealed) for n in (MIB + 1, MIB + 1000, MIB + 9000)}
    assert len(big) == 1
    size = big.pop()
    assert size % 4096 == 0 and size - MIB <= MIB / 64 + 4096


def test_tampered_chunk_rejected() -> None:
    mac = new_key()
    sc = seal_chunk(mac, rand(50_000))
    for i in (0, 1, 13, 100, len(sc.sealed) // 2, len(sc.sealed) - 1):
        bad = bytearray(sc.sealed)
        bad[i] ^= 0x04
        with pytest.raises((DecryptionError, FormatError)):
            open_chunk(sc.chunk_key, bytes(bad), sc.chunk_id, mac)
        with pytest.raises(DecryptionError):
            open_chunk(sc.chunk_key, bytes(bad), sc.chunk_id, sealed_hash=sc.sealed_hash)
    with pytest.raises(CryptreeError):
        open_chunk(sc.chunk_key, sc.sealed[:20], sc.chunk_id)
    with pytest.raises(CryptreeError):
        open_chunk(sc.chunk_key, sc.sealed[:-16], sc.chunk_id)


def test_wrong_key_id_or_length_rejected() -> None:
    mac = new_key()
    sc = seal_chunk(mac, rand(5000))
    other = seal_chunk(mac, rand(5000, 1))
    with pytest.raises(DecryptionError):
        open_chunk(other.chunk_key, sc.sealed, sc.chunk_id)
    with pytest.raises(DecryptionError):
        open_chunk(sc.chunk_key, sc.sealed, other.chunk_id)  # id is bound as AAD
    with pytest.raises(FormatError):
        open_chunk(sc.chunk_key, sc.sealed, sc.chunk_id, expected_length=4999)
    with pytest.raises(CryptreeError):
        open_chunk(sc.chunk_key, sc.sealed, b"short")


def _forge(key: bytes, cid: bytes, body: bytes, header: int) -> bytes:
    # What a fellow reader who knows the chunk key could produce.
    hdr = bytes((header,))
    return hdr + aead_seal(key, pad(body, 1 + AEAD_OVERHEAD), b"pluto/v1/chunk" + hdr + cid)


def test_forgery_by_someone_knowing_the_chunk_key_is_caught() -> None:
    mac = new_key()
    sc = seal_chunk(mac, b"the real content")
    forged = _forge(sc.chunk_key, sc.chunk_id, b"evil content", CHUNK_FORMAT)
    assert open_chunk(sc.chunk_key, forged, sc.chunk_id) == b"evil content"  # AEAD alone cannot tell
    with pytest.raises(DecryptionError):
        open_chunk(sc.chunk_key, forged, sc.chunk_id, mac)  # the owner checks the keyed id
    with pytest.raises(DecryptionError):
        open_chunk(sc.chunk_key, forged, sc.chunk_id, sealed_hash=sc.sealed_hash)  # a sharee checks the hash


def test_hostile_headers_and_bombs_refused() -> None:
    key, cid = new_key(), bytes(32)
    with pytest.raises(FormatError, match="format byte"):
        open_chunk(key, _forge(key, cid, b"x", 0x20), cid)
    with pytest.raises(FormatError, match="format byte"):
        open_chunk(key, _forge(key, cid, b"x", CHUNK_FORMAT | 0x02), cid)
    bomb = zstandard.ZstdCompressor().compress(bytes(17 * MIB))
    with pytest.raises(FormatError, match="size"):
        open_chunk(key, _forge(key, cid, bomb, CHUNK_FORMAT | FLAG_ZSTD), cid)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 1000)
    with pytest.raises(FormatError):
        open_chunk(key, _forge(key, cid, no_size, CHUNK_FORMAT | FLAG_ZSTD), cid)
    with pytest.raises(FormatError):
        open_chunk(key, _forge(key, cid, b"not zstd at all", CHUNK_FORMAT | FLAG_ZSTD), cid)


def test_oversized_chunk_refused() -> None:
    with pytest.raises(CryptreeError):
        seal_chunk(new_key(), bytes(16 * MIB + 1), compress=False)
    with pytest.raises(CryptreeError):
        chunk_id(b"short", b"x")


def test_a_chunk_that_is_compressible_in_parts_is_still_compressed() -> None:
    mac = new_key()
    # random in the middle, text at the edges: the probes see text and try the whole chunk
    text = b"all work and no play makes jack a dull boy\n" * 8_000
    mixed = text + rand(100_000) + text
    sc = seal_chunk(mac, mixed)
    assert sc.compressed and len(sc.sealed) < len(mixed) // 2
    assert open_chunk(sc.chunk_key, sc.sealed, sc.chunk_id, mac) == mixed
    # and the other way round: a random-looking probe skips compression, losing nothing but space
    mostly_random = rand(MIB)
    sc = seal_chunk(mac, mostly_random)
    assert not sc.compressed
    assert open_chunk(sc.chunk_key, sc.sealed, sc.chunk_id, mac) == mostly_random
