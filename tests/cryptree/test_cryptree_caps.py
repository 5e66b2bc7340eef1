"""Capability strings: round trip, and refusal of anything not exactly a capability."""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptree.caps import ReadCap, WriteCap, new_write_cap, parse_cap
from cryptree.errors import CapabilityError

WRITE = WriteCap("dir", bytes(range(32)), bytes(range(32, 64)))
READ = WRITE.read_cap()
VALID = [WRITE.to_string(), READ.to_string(), WriteCap("file", b"\x07" * 32, b"\x09" * 32).to_string()]


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_round_trip(kind: str) -> None:
    w = new_write_cap(kind)  # type: ignore[arg-type]
    r = w.read_cap()
    assert w.to_string().startswith("pluto:w:") and r.to_string().startswith("pluto:r:")
    assert parse_cap(w.to_string()) == w
    assert parse_cap(r.to_string()) == r
    assert r.kind == w.kind == kind and r.writer == w.writer and r.read_key == w.read_key
    assert r.read_cap() is r


def test_read_cap_does_not_contain_write_secret() -> None:
    w = new_write_cap("dir")
    r = w.read_cap()
    assert w.writer_seed not in r.to_string().encode() and w.writer_seed not in r.writer + r.read_key
    assert not hasattr(r, "writer_seed") and not hasattr(r, "signing_key")


def test_tolerates_whitespace_and_case() -> None:
    assert parse_cap(f"  {VALID[0]}\n") == WRITE
    assert parse_cap(VALID[1].upper()) == READ


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pluto:",
        "pluto:r:",
        "pluto:x:" + VALID[1][8:],
        "tahoe:r:" + VALID[1][8:],
        "pluto:r:" + VALID[1][8:] + ":extra",
        VALID[1][:-1],
        VALID[1][:-8],
        VALID[1] + "a",
        VALID[1][:-1] + "1",  # '1' is not base32
        VALID[1][:-1] + "é",
        VALID[1][:20] + "\u212a" + VALID[1][21:],  # Kelvin sign lowercases to 'k'
        "pluto:w:" + VALID[1][8:],  # r -> w flips the checksum domain
        "pluto:r:" + VALID[0][8:],
        "x" * 10_000,
    ],
)
def test_rejects_malformed(text: str) -> None:
    with pytest.raises(CapabilityError) as info:
        parse_cap(text)
    assert "\n" not in str(info.value)


def test_rejects_non_text() -> None:
    with pytest.raises(CapabilityError):
        parse_cap(b"pluto:r:abc")  # type: ignore[arg-type]


def test_wrong_field_sizes_refused() -> None:
    with pytest.raises(CapabilityError):
        ReadCap("dir", b"x" * 31, b"y" * 32)
    with pytest.raises(CapabilityError):
        WriteCap("symlink", b"x" * 32, b"y" * 32)  # type: ignore[arg-type]


_ALPHABET = string.ascii_lowercase + "234567:" + "17 \x00é"


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(
        st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.integers(0, 200), st.sampled_from(_ALPHABET)),
        min_size=1,
        max_size=4,
    ),
)
def test_any_mutation_is_refused_cleanly(text: str, edits: list[tuple[str, int, str]]) -> None:
    mutated = text
    for op, pos, ch in edits:
        pos %= len(mutated) + 1
        if op == "replace" and pos < len(mutated):
            mutated = mutated[:pos] + ch + mutated[pos + 1 :]
        elif op == "insert":
            mutated = mutated[:pos] + ch + mutated[pos:]
        elif mutated:
            mutated = mutated[: min(pos, len(mutated) - 1)] + mutated[min(pos, len(mutated) - 1) + 1 :]
    try:
        parsed = parse_cap(mutated)
    except CapabilityError:
        return
    # Only edits that leave the capability itself unchanged (case, outer
    # whitespace) may parse; the 4-byte checksum makes anything else a 2**-32 fluke.
    assert mutated.strip().lower() == text, (text, mutated)
    assert parsed.to_string() == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    with contextlib.suppress(CapabilityError):
        parse_cap(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=70, max_size=70), st.sampled_from(["r", "w"]))
def test_random_payloads_fail_checksum(payload: bytes, access: str) -> None:
    import base64

    text = f"pluto:{access}:" + base64.b32encode(payload).decode().lower()
    with pytest.raises(CapabilityError):
        parse_cap(text)
