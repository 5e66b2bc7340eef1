"""Property tests of the message decoder: any input decodes or raises ProtocolError."""

from __future__ import annotations

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.errors import ProtocolError
from transport.protocol import wire
from transport.protocol.peer_id import parse_peer_id, peer_id_text

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=64) | st.text(max_size=32)
    | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
anything = st.recursive(
    plain | st.dictionaries(st.integers() | st.binary(max_size=4), plain, max_size=3),
    lambda children: st.lists(children, max_size=5) | st.tuples(st.integers(0, 7), st.integers(-5, 2**64), children),
    max_leaves=30,
)


def _decode_or_refuse(buf: bytes) -> None:
    try:
        msg = wire.decode(buf)
    except ProtocolError:
        return
    assert isinstance(msg, wire.Message)
    assert msg.kind in range(6) and msg.id >= 0


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_refuse(buf: bytes) -> None:
    _decode_or_refuse(buf)


@settings(max_examples=400, deadline=None)
@given(anything)
def test_any_cbor_value_decodes_or_refuses(value: object) -> None:
    _decode_or_refuse(cbor2.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_mutated_valid_message_decodes_or_refuses(tail: bytes, data: st.DataObject) -> None:
    good = bytearray(wire.request(7, "put_slot", {"writer": tail, "seq": 3}))
    pos = data.draw(st.integers(0, len(good) - 1))
    good[pos] = data.draw(st.integers(0, 255))
    _decode_or_refuse(bytes(good))
    _decode_or_refuse(bytes(good[:pos]))


@given(
    st.integers(0, 2**63 - 1), st.text(min_size=1, max_size=64), st.dictionaries(st.text(max_size=8), plain, max_size=4)
)
@settings(max_examples=200, deadline=None)
def test_valid_requests_round_trip(id_: int, method: str, args: dict) -> None:
    msg = wire.decode(wire.request(id_, method, args))
    assert (msg.kind, msg.id, msg.method, msg.args) == (wire.REQUEST, id_, method, args)


def test_tags_and_deep_nesting_are_refused() -> None:
    for bad in [
        cbor2.dumps([0, 1, "m", {"t": cbor2.CBORTag(1, 1234)}]),
        cbor2.dumps([0, 1, "m", {"s": {1, 2}}]),
        b"\x84\x00\x01\x61m" + b"\xa1\x61k" * 40 + b"\x00",
    ]:
        try:
            wire.decode(bad)
        except ProtocolError:
            continue
        raise AssertionError(f"accepted {bad!r}")


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_round_trip(key: bytes) -> None:
    text = peer_id_text(key)
    assert text.startswith("b") and text == text.lower()
    assert parse_peer_id(text) == key


@given(st.text(max_size=80))
def test_peer_id_parse_refuses_junk_cleanly(text: str) -> None:
    try:
        key = parse_peer_id(text)
    except ValueError:
        return
    assert len(key) == 32


def test_shared_reference_bomb_is_refused_quickly() -> None:
    """Shared-reference tags (28/29) could describe an exponentially large walk in a few bytes."""
    import time

    # 40 shareable arrays (tag 28), each referring twice (tag 29) to the previous one
    parts = [b"\xd8\x1c\x81\x01"]
    for i in range(1, 40):
        ref = b"\xd8\x1d" + cbor2.dumps(i - 1)
        parts.append(b"\xd8\x1c\x82" + ref + ref)
    # nest them: array of all, so earlier ones are defined before use
    msg = b"\x84\x00\x01\x61m\xa1\x61k" + b"\x98" + bytes([len(parts)]) + b"".join(parts)
    decoded = cbor2.loads(msg)  # cbor2 itself accepts it: the check must be ours
    assert decoded[3]["k"][39][0] is decoded[3]["k"][39][1]
    start = time.monotonic()
    try:
        wire.decode(msg)
    except ProtocolError:
        pass
    else:
        raise AssertionError("a shared-reference structure was accepted")
    assert time.monotonic() - start < 1.0
