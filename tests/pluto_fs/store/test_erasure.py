"""Tests for pluto_fs.store.erasure: zfec k-of-n over one segment."""

from __future__ import annotations

import array
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pluto_fs.store.erasure import (
    ErasureError,
    InvalidFragment,
    InvalidParameters,
    NotEnoughFragments,
    decode_segment,
    decode_segment_views,
    encode_segment,
    fragment_size,
)

K, N = 3, 5


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 17, 1000, 4096, 65537, 3 * 65536 + 1])
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    frags = encode_segment(data, K, N)
    assert len(frags) == N
    assert all(isinstance(f, bytes) and len(f) == fragment_size(size, K) for f in frags)
    assert decode_segment(dict(enumerate(frags)), K, N, size) == data


def test_code_is_systematic_and_zero_padded() -> None:
    # Fragments 0..k-1 are the segment itself: reads with all primaries skip decoding.
    data = b"abcdefg"
    frags = encode_segment(data, K, N)
    assert frags[:K] == [b"abc", b"def", b"g\0\0"]


@pytest.mark.parametrize("size", [0, 1, 2, 10, 3000, 100_001])
def test_decode_from_every_k_subset(size: int) -> None:
    data = os.urandom(size)
    frags = encode_segment(data, K, N)
    for r in range(K, N + 1):
        for subset in itertools.combinations(range(N), r):
            assert decode_segment({i: frags[i] for i in subset}, K, N, size) == data, subset


def test_decode_order_of_mapping_does_not_matter() -> None:
    data = os.urandom(1001)
    frags = encode_segment(data, K, N)
    assert decode_segment({4: frags[4], 0: frags[0], 2: frags[2]}, K, N, 1001) == data


@pytest.mark.parametrize("have", [0, 1, 2])
def test_fewer_than_k_raises(have: int) -> None:
    frags = encode_segment(b"x" * 100, K, N)
    with pytest.raises(NotEnoughFragments) as info:
        decode_segment({i: frags[i] for i in range(have)}, K, N, 100)
    assert isinstance(info.value, ErasureError)
    assert info.value.need == K and info.value.have == tuple(range(have))
    assert "need 3" in str(info.value)


def test_bad_fragment_numbers_and_lengths() -> None:
    frags = encode_segment(b"y" * 99, K, N)
    good = {0: frags[0], 1: frags[1]}
    for num in (-1, N, 256, "0", None):
        with pytest.raises(InvalidFragment):
            decode_segment({**good, num: frags[2]}, K, N, 99)
    for num in (True, 1.0):  # equal to 1 as keys, so pair them with 0 and 2 only
        with pytest.raises(InvalidFragment):
            decode_segment({0: frags[0], 2: frags[2], num: frags[1]}, K, N, 99)
    with pytest.raises(InvalidFragment):
        decode_segment({**good, 2: frags[2][:-1]}, K, N, 99)
    with pytest.raises(InvalidFragment):
        decode_segment({**good, 2: frags[2] + b"\0"}, K, N, 99)
    with pytest.raises(InvalidFragment):  # right fragments, wrong claimed segment length
        decode_segment(dict(enumerate(frags)), K, N, 120)
    with pytest.raises(InvalidFragment):
        decode_segment({**good, 2: "not bytes"}, K, N, 99)
    with pytest.raises(InvalidFragment):
        decode_segment([frags[0], frags[1], frags[2]], K, N, 99)  # type: ignore[arg-type]


@pytest.mark.parametrize("k,n", [(0, 5), (3, 2), (1, 257), (-1, 1), (True, 3), (3, 5.0), (None, 1)])
def test_bad_parameters(k: object, n: object) -> None:
    with pytest.raises(InvalidParameters):
        encode_segment(b"data", k, n)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameters):
        decode_segment({}, k, n, 4)  # type: ignore[arg-type]


def test_bad_length_and_range() -> None:
    frags = dict(enumerate(encode_segment(b"z" * 30, K, N)))
    for length in (-1, None, 30.0, True):
        with pytest.raises(InvalidParameters):
            decode_segment(frags, K, N, length)  # type: ignore[arg-type]
    for start, stop in ((-1, 5), (5, 4), (0, 31)):
        with pytest.raises(InvalidParameters):
            decode_segment_views(frags, K, N, 30, start, stop)


def test_extremes_of_k_and_n() -> None:
    data = os.urandom(5000)
    for k, n in ((1, 1), (1, 3), (5, 5), (2, 256), (255, 256), (256, 256)):
        frags = encode_segment(data, k, n)
        assert len(frags) == n
        last = list(range(n - k, n))  # the worst case: as many secondaries as possible
        assert decode_segment({i: frags[i] for i in last}, k, n, len(data)) == data


def test_accepts_other_buffers_and_does_not_alias_mutable_input() -> None:
    data = bytearray(os.urandom(301))
    frags = encode_segment(data, K, N)
    expected = bytes(data)
    data[:] = bytes(len(data))  # caller reuses its buffer
    assert decode_segment({1: frags[1], 3: frags[3], 4: frags[4]}, K, N, 301) == expected
    words = array.array("I", range(50))  # itemsize 4: lengths must be counted in bytes
    frags = encode_segment(memoryview(words), K, N)
    views = {i: memoryview(bytearray(f)) for i, f in enumerate(frags)}
    assert decode_segment(views, K, N, 200) == words.tobytes()


def test_views_cover_requested_range() -> None:
    data = os.urandom(1000)
    frags = encode_segment(data, K, N)
    picked = {0: frags[0], 3: frags[3], 4: frags[4]}
    for start, stop in ((0, 1000), (0, 0), (333, 335), (334, 1000), (999, 1000), (10, 700)):
        assert b"".join(decode_segment_views(picked, K, N, 1000, start, stop)) == data[start:stop]


@settings(max_examples=150, deadline=None)
@given(
    kn=st.integers(1, 12).flatmap(lambda k: st.tuples(st.just(k), st.integers(k, 16))),
    data=st.binary(max_size=3000),
    pick=st.randoms(use_true_random=False),
)
def test_hypothesis_round_trip(kn: tuple[int, int], data: bytes, pick) -> None:
    k, n = kn
    frags = encode_segment(data, k, n)
    assert len(frags) == n and len({len(f) for f in frags}) == 1
    chosen = pick.sample(range(n), k)
    assert decode_segment({i: frags[i] for i in chosen}, k, n, len(data)) == data
