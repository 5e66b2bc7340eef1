"""AEAD helpers, sub-key derivation and padding buckets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptree.errors import CryptreeError, DecryptionError, FormatError
from cryptree.keys import AEAD_OVERHEAD, aead_open, aead_seal, derive_subkey, new_key
from cryptree.padding import MIN_STEP, pad, padded_size, unpad


def test_seal_open_round_trip_with_aad() -> None:
    key = new_key()
    sealed = aead_seal(key, b"secret", b"context")
    assert len(sealed) == 6 + AEAD_OVERHEAD
    assert aead_open(key, sealed, b"context") == b"secret"
    assert aead_seal(key, b"secret", b"context") != sealed  # random nonce


@pytest.mark.parametrize("mutate", ["key", "aad", "flip", "truncate", "empty"])
def test_open_rejects(mutate: str) -> None:
    key = new_key()
    sealed = aead_seal(key, b"secret", b"context")
    args = {"key": key, "sealed": sealed, "aad": b"context"}
    if mutate == "key":
        args["key"] = new_key()
    elif mutate == "aad":
        args["aad"] = b"other"
    elif mutate == "flip":
        args["sealed"] = sealed[:5] + bytes([sealed[5] ^ 1]) + sealed[6:]
    elif mutate == "truncate":
        args["sealed"] = sealed[:-1]
    else:
        args["sealed"] = b""
    with pytest.raises(DecryptionError, match="chunk"):
        aead_open(args["key"], args["sealed"], args["aad"], "chunk")


def test_bad_keys_are_refused() -> None:
    with pytest.raises(CryptreeError):
        aead_seal(b"short", b"x")
    with pytest.raises(CryptreeError):
        aead_open("not bytes", b"x" * 40)  # type: ignore[arg-type]


def test_derive_subkey_is_deterministic_and_separated() -> None:
    key = new_key()
    assert derive_subkey(key, b"a") == derive_subkey(key, b"a")
    assert derive_subkey(key, b"a") != derive_subkey(key, b"b")
    assert derive_subkey(key, b"a") != derive_subkey(new_key(), b"a")
    assert len(derive_subkey(key, b"a", 8)) == 8


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=1 << 34))
def test_padded_size_bounds(n: int) -> None:
    size = padded_size(n)
    assert size >= max(n, MIN_STEP)
    assert size % MIN_STEP == 0
    # Overhead is at most one 4 KiB step for small objects, at most 1/64 for large ones.
    assert size - n <= max(MIN_STEP, n / 64)


def test_buckets_hide_exact_size() -> None:
    assert padded_size(1) == padded_size(4000) == 4096
    assert padded_size(1_000_000) == padded_size(1_000_001)
    assert len({padded_size(n) for n in range((1 << 20) + 1, (1 << 20) + 16385)}) == 1


@settings(max_examples=100)
@given(st.binary(max_size=10_000), st.integers(min_value=0, max_value=100))
def test_pad_unpad_round_trip(body: bytes, overhead: int) -> None:
    framed = pad(body, overhead)
    assert len(framed) + overhead == padded_size(len(framed) + overhead)
    assert bytes(unpad(framed, "x")) == body


def test_unpad_rejects_inconsistent_frames() -> None:
    with pytest.raises(FormatError):
        unpad(b"\x00\x00", "x")
    with pytest.raises(FormatError):
        unpad((100).to_bytes(4, "big") + b"abc", "x")
    with pytest.raises(FormatError, match="padding"):
        unpad((1).to_bytes(4, "big") + b"a\x00\x01", "x")
