"""Tests for pluto_fs.store.packs: pack building, layout, segment coding, range reads."""

from __future__ import annotations

import itertools
import os
import random

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptree.merkle import merkle_root
from pluto_fs.store.erasure import InvalidFragment, NotEnoughFragments
from pluto_fs.store.packs import (
    DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE,
    LayoutError,
    Pack,
    PackBuilder,
    PackError,
    PackFullError,
    PackLayout,
    RangeError,
    SegmentLayout,
    SegmentRange,
    decode_pack,
    decode_pack_range,
    encode_pack,
    pack_id_of,
    read_range,
    rebuild_fragments,
    split_segments,
    verify_fragment,
)

K, N = 3, 5


def cid(i: int) -> bytes:
    return i.to_bytes(32, "big")


def as_maps(fragments: list[list[bytes]]) -> dict[int, dict[int, bytes]]:
    return {s: dict(enumerate(frags)) for s, frags in enumerate(fragments)}


# ----------------------------------------------------------------- builder


def test_builder_concatenates_and_locates() -> None:
    b = PackBuilder(target_size=100)
    chunks = [os.urandom(n) for n in (10, 1, 33)]
    locs = [b.add(cid(i), c) for i, c in enumerate(chunks)]
    assert locs == [(0, 10), (10, 1), (11, 33)]
    assert b.size == 44 and b.count == 3 and not b.full
    pack = b.finish()
    assert isinstance(pack, Pack)
    assert pack.data == b"".join(chunks)  # no header, no index: nothing but sealed bytes
    assert pack.pack_id == pack_id_of(pack.data) and len(pack.pack_id) == 32
    assert [(e.chunk_id, e.offset, e.length) for e in pack.entries] == [
        (cid(0), 0, 10), (cid(1), 10, 1), (cid(2), 11, 33)]
    for (off, ln), c in zip(locs, chunks, strict=True):
        assert pack.data[off : off + ln] == c


def test_builder_full_and_fits() -> None:
    b = PackBuilder(target_size=10)
    assert b.fits(50)  # an empty pack takes any chunk, however big
    b.add(cid(0), b"a" * 6)
    assert b.fits(4) and not b.fits(5)
    b.add(cid(1), b"b" * 7)  # overshoots: chunks are never split
    assert b.full
    with pytest.raises(PackFullError):
        b.add(cid(2), b"c")
    pack = b.finish()
    assert len(pack.data) == 13
    with pytest.raises(PackFullError):
        b.add(cid(3), b"d")
    with pytest.raises(PackFullError):
        b.finish()


def test_builder_dedups_only_identical_bytes() -> None:
    b = PackBuilder()
    assert b.add(cid(7), b"same") == (0, 4)
    assert b.add(cid(7), bytearray(b"same")) == (0, 4)
    assert b.add(cid(7), b"other") == (4, 5)  # re-sealed under another key: its own entry
    assert b.add(cid(8), b"same") == (9, 4)  # another chunk id is never merged
    assert b.count == 3


def test_builder_rejects_bad_input() -> None:
    b = PackBuilder()
    with pytest.raises(ValueError):
        b.add(b"short", b"x")
    with pytest.raises(ValueError):
        b.add("x" * 32, b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        b.add(cid(1), b"")
    with pytest.raises(TypeError):
        b.add(cid(1), "text")  # type: ignore[arg-type]
    with pytest.raises(PackError):
        b.finish()  # empty
    for bad in (0, -1, 2**31, 1.5, True):
        with pytest.raises(ValueError):
            PackBuilder(target_size=bad)  # type: ignore[arg-type]


def test_builder_copies_mutable_chunks() -> None:
    b = PackBuilder()
    buf = bytearray(b"hello")
    b.add(cid(1), buf)
    buf[:] = b"XXXXX"
    assert b.finish().data == b"hello"


# ----------------------------------------------------------------- encoding


@pytest.mark.parametrize("size", [0, 1, K - 1, 7, 63, 64, 65, 1000, 12_345])
@pytest.mark.parametrize("segment_size", [1, 2, 64, 999, DEFAULT_SEGMENT_SIZE])
def test_encode_decode_round_trip(size: int, segment_size: int) -> None:
    data = os.urandom(size)
    layout, frags = encode_pack(data, K, N, segment_size)
    assert layout.pack_id == pack_id_of(data)
    assert layout.length == size and (layout.k, layout.n, layout.segment_size) == (K, N, segment_size)
    assert len(layout.segments) == len(frags) == -(-size // segment_size)
    assert [bytes(s) for s in split_segments(data, segment_size)] == [
        data[o : o + segment_size] for o in range(0, size, segment_size)]
    for index, (seg, seg_frags) in enumerate(zip(layout.segments, frags, strict=True)):
        assert seg.length == min(segment_size, size - index * segment_size)
        assert seg.fragment_ids == tuple(merkle_root(f) for f in seg_frags)
        assert all(len(f) == layout.fragment_length(index) for f in seg_frags)
    assert decode_pack(layout, as_maps(frags)) == data
    assert decode_pack_range(layout, as_maps(frags), 0, size) == data


def test_pack_id_is_content_derived_and_encoding_independent() -> None:
    data = os.urandom(5000)
    a, _ = encode_pack(data, 3, 5, 1000)
    b, _ = encode_pack(data, 4, 7, 4096)
    assert a.pack_id == b.pack_id  # locators stay valid when a pack is re-encoded
    assert encode_pack(data[:-1] + bytes([data[-1] ^ 1]), 3, 5, 1000)[0].pack_id != a.pack_id
    assert a.pack_id != merkle_root(data)  # domain-separated from fragment ids


def test_encoding_is_deterministic() -> None:
    data = os.urandom(3000)
    assert encode_pack(data, K, N, 1000) == encode_pack(data, K, N, 1000)


def test_every_k_subset_per_segment() -> None:
    data = os.urandom(2500)
    layout, frags = encode_pack(data, K, N, 1000)
    for subset in itertools.combinations(range(N), K):
        picked = {s: {i: frags[s][i] for i in subset} for s in range(len(frags))}
        assert decode_pack(layout, picked) == data
    # Different subsets per segment (fragments come from whichever peers answered).
    rng = random.Random(1)
    for _ in range(20):
        picked = {s: {i: frags[s][i] for i in rng.sample(range(N), K)} for s in range(len(frags))}
        assert decode_pack(layout, picked) == data


def test_bad_encode_parameters() -> None:
    for k, n, seg in ((0, 5, 10), (6, 5, 10), (3, 5, 0), (3, 5, MAX_SEGMENT_SIZE + 1), (3, 300, 10), (3, 5, 1.0)):
        with pytest.raises(LayoutError):
            encode_pack(b"abc", k, n, seg)  # type: ignore[arg-type]


# ----------------------------------------------------------------- ranges


def test_read_range_segments() -> None:
    layout, _ = encode_pack(os.urandom(2500), K, N, 1000)
    assert read_range(layout, 0, 0) == []
    assert read_range(layout, 2500, 0) == []
    assert read_range(layout, 0, 10) == [SegmentRange(0, 0, 10)]
    assert read_range(layout, 990, 20) == [SegmentRange(0, 990, 1000), SegmentRange(1, 0, 10)]
    assert read_range(layout, 999, 1501) == [
        SegmentRange(0, 999, 1000), SegmentRange(1, 0, 1000), SegmentRange(2, 0, 500)]
    assert read_range(layout, 2000, 500) == [SegmentRange(2, 0, 500)]
    for off, ln in ((-1, 1), (0, -1), (2500, 1), (2400, 101), (0.0, 1), (0, None)):
        with pytest.raises(RangeError):
            read_range(layout, off, ln)  # type: ignore[arg-type]


def test_decode_range_needs_only_touched_segments() -> None:
    data = os.urandom(2500)
    layout, frags = encode_pack(data, K, N, 1000)
    only_middle = {1: {0: frags[1][0], 2: frags[1][2], 4: frags[1][4]}}
    assert decode_pack_range(layout, only_middle, 1100, 300) == data[1100:1400]
    with pytest.raises(NotEnoughFragments, match="segment 0"):
        decode_pack_range(layout, only_middle, 990, 20)
    rng = random.Random(2)
    maps = as_maps(frags)
    for _ in range(200):
        off = rng.randrange(0, 2501)
        ln = rng.randrange(0, 2501 - off)
        assert decode_pack_range(layout, maps, off, ln) == data[off : off + ln]


# ----------------------------------------------------------------- verification


def test_verify_fragment() -> None:
    layout, frags = encode_pack(os.urandom(100_000), K, N, 50_000)
    fid = layout.segments[0].fragment_ids[3]
    frag = frags[0][3]
    assert verify_fragment(fid, frag)
    assert verify_fragment(fid, memoryview(bytearray(frag)))
    flipped = bytearray(frag)
    flipped[len(flipped) // 2] ^= 0x01
    assert not verify_fragment(fid, bytes(flipped))
    assert not verify_fragment(fid, frag[:-1])  # truncation changes the root too
    assert not verify_fragment(fid, frag + b"\0")
    assert not verify_fragment(layout.segments[0].fragment_ids[2], frag)  # another fragment's id
    assert not verify_fragment(fid[:31], frag)
    assert not verify_fragment(fid, "text")  # type: ignore[arg-type]


def test_corrupted_fragment_is_skipped_or_reported() -> None:
    data = os.urandom(3000)
    layout, frags = encode_pack(data, K, N, 3000)
    bad = bytearray(frags[0][1])
    bad[0] ^= 0xFF
    with_spare = {0: {0: frags[0][0], 1: bytes(bad), 2: frags[0][2], 3: frags[0][3]}}
    assert decode_pack(layout, with_spare) == data  # fragment 3 stands in for the corrupt 1
    exactly_k = {0: {0: frags[0][0], 1: bytes(bad), 2: frags[0][2]}}
    with pytest.raises(NotEnoughFragments, match=r"rejected by Merkle check: \[1\]"):
        decode_pack(layout, exactly_k)
    # Without verification, the corruption flows into the output; that is what verify is for.
    assert decode_pack_range(layout, exactly_k, 0, 3000, verify=False) != data


def test_bad_fragment_maps() -> None:
    layout, frags = encode_pack(os.urandom(300), K, N, 100)
    maps = as_maps(frags)
    with pytest.raises(InvalidFragment):
        decode_pack_range(layout, {0: {**maps[0], 7: frags[0][0]}}, 0, 10)
    with pytest.raises(InvalidFragment):
        decode_pack_range(layout, {0: [frags[0][0]]}, 0, 10)  # type: ignore[dict-item]
    with pytest.raises(NotEnoughFragments):
        decode_pack_range(layout, {}, 0, 10)


def test_rebuild_fragments_matches_ids() -> None:
    data = os.urandom(10_000)
    layout, frags = encode_pack(data, K, N, 4000)
    for index in range(len(frags)):
        survivors = {1: frags[index][1], 3: frags[index][3], 4: frags[index][4]}
        rebuilt = rebuild_fragments(layout, index, survivors, [0, 2])
        assert rebuilt == {0: frags[index][0], 2: frags[index][2]}
    with pytest.raises(RangeError):
        rebuild_fragments(layout, 3, survivors, [0])
    with pytest.raises(RangeError):
        rebuild_fragments(layout, 0, survivors, [5])


def test_decode_pack_detects_wrong_layout() -> None:
    data = os.urandom(100)
    layout, frags = encode_pack(data, K, N, 100)
    lying = PackLayout(bytes(32), layout.length, K, N, 100, layout.segments)
    with pytest.raises(LayoutError):
        decode_pack(lying, as_maps(frags))


# ----------------------------------------------------------------- serialization


def test_layout_dict_round_trip_through_cbor() -> None:
    for size, seg in ((0, 10), (1, 10), (1234, 100), (100, 100)):
        layout, _ = encode_pack(os.urandom(size), K, N, seg)
        d = layout.to_dict()
        assert PackLayout.from_dict(cbor2.loads(cbor2.dumps(d))) == layout
        assert PackLayout.from_dict(d) == layout


def _valid_dict() -> dict:
    layout, _ = encode_pack(os.urandom(250), K, N, 100)
    return layout.to_dict()


def _mutations() -> list:
    """(description, mutate(d)) pairs, each making a valid dict invalid."""

    def set_key(key, value):
        def f(d):
            d[key] = value
        return f

    def seg(fn):
        def f(d):
            fn(d["segments"])
        return f

    muts = [
        ("not a dict", lambda d: [1, 2]),
        ("missing key", lambda d: d.pop("k")),
        ("extra key", set_key("extra", 1)),
        ("non-str key", set_key(7, 1)),
        ("version", set_key("v", 2)),
        ("version bool", set_key("v", True)),
        ("pack id short", set_key("pack_id", b"x" * 31)),
        ("pack id str", set_key("pack_id", "x" * 32)),
        ("pack id bytearray", set_key("pack_id", bytearray(32))),
        ("length negative", set_key("length", -1)),
        ("length str", set_key("length", "250")),
        ("length float", set_key("length", 250.0)),
        ("length huge", set_key("length", 2**64)),
        ("length mismatch", set_key("length", 301)),
        ("length shorter", set_key("length", 249)),
        ("k zero", set_key("k", 0)),
        ("k > n", set_key("k", 6)),
        ("k bool", set_key("k", True)),
        ("n huge", set_key("n", 257)),
        ("n none", set_key("n", None)),
        ("n changed", set_key("n", 4)),
        ("segment size zero", set_key("segment_size", 0)),
        ("segment size huge", set_key("segment_size", MAX_SEGMENT_SIZE + 1)),
        ("segment size changed", set_key("segment_size", 125)),
        ("segments not list", set_key("segments", {"a": 1})),
        ("segments bytes", set_key("segments", b"abc")),
        ("segments none", set_key("segments", None)),
        ("segment missing", seg(lambda s: s.pop())),
        ("segment extra", seg(lambda s: s.append(s[0]))),
        ("segment not pair", seg(lambda s: s.__setitem__(0, [100]))),
        ("segment triple", seg(lambda s: s[0].append(1))),
        ("segment is dict", seg(lambda s: s.__setitem__(0, {"length": 100}))),
        ("segment is int", seg(lambda s: s.__setitem__(0, 5))),
        ("segment length wrong", seg(lambda s: s[0].__setitem__(0, 99))),
        ("last segment length wrong", seg(lambda s: s[-1].__setitem__(0, 100))),
        ("segment length str", seg(lambda s: s[0].__setitem__(0, "100"))),
        ("ids not list", seg(lambda s: s[0].__setitem__(1, b"x" * 160))),
        ("ids too few", seg(lambda s: s[0][1].pop())),
        ("ids too many", seg(lambda s: s[0][1].append(bytes(32)))),
        ("id short", seg(lambda s: s[0][1].__setitem__(2, b"x"))),
        ("id int", seg(lambda s: s[0][1].__setitem__(2, 5))),
        ("id nested", seg(lambda s: s[0][1].__setitem__(2, [bytes(32)]))),
    ]
    return muts


@pytest.mark.parametrize("name,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_from_dict_rejects_junk(name: str, mutate) -> None:
    d = _valid_dict()
    PackLayout.from_dict(d)  # sanity: valid before the mutation
    out = mutate(d)
    target = out if name == "not a dict" else d
    with pytest.raises(LayoutError):
        PackLayout.from_dict(target)


def test_layout_constructor_validates() -> None:
    good, _ = encode_pack(os.urandom(250), K, N, 100)
    with pytest.raises(LayoutError):
        PackLayout(good.pack_id, 250, K, N, 100, list(good.segments))  # type: ignore[arg-type]
    with pytest.raises(LayoutError):
        PackLayout(good.pack_id, 250, K, N, 100,
                   (good.segments[0], good.segments[1], SegmentLayout(50, list(good.segments[2].fragment_ids))))


_cbor_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=40) | st.text(max_size=10),
    lambda inner: (st.lists(inner, max_size=6)
                   | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=8)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(junk=_cbor_junk)
def test_from_dict_fuzz_never_raises_anything_but_layout_error(junk) -> None:
    with pytest.raises(LayoutError):
        PackLayout.from_dict(junk)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["v", "pack_id", "length", "k", "n", "segment_size", "segments"]), junk=_cbor_junk)
def test_from_dict_fuzz_single_field(key: str, junk) -> None:
    d = _valid_dict()
    d[key] = junk
    try:
        layout = PackLayout.from_dict(d)
    except LayoutError:
        return
    assert layout.to_dict() == d  # only a value equal to a valid one may pass


# ----------------------------------------------------------------- hypothesis round trip


@settings(max_examples=120, deadline=None)
@given(
    kn=st.integers(1, 8).flatmap(lambda k: st.tuples(st.just(k), st.integers(k, 12))),
    data=st.binary(max_size=4000),
    segment_size=st.integers(1, 1500),
    seed=st.integers(0, 2**32),
)
def test_hypothesis_pack_round_trip(kn: tuple[int, int], data: bytes, segment_size: int, seed: int) -> None:
    k, n = kn
    layout, frags = encode_pack(data, k, n, segment_size)
    assert PackLayout.from_dict(cbor2.loads(cbor2.dumps(layout.to_dict()))) == layout
    rng = random.Random(seed)
    picked = {s: {i: frags[s][i] for i in rng.sample(range(n), k)} for s in range(len(frags))}
    assert decode_pack(layout, picked) == data
    off = rng.randrange(0, len(data) + 1)
    ln = rng.randrange(0, len(data) - off + 1)
    assert decode_pack_range(layout, picked, off, ln) == data[off : off + ln]
