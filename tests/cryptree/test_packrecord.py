"""Pack records: v1 (a peer per column) and v2 (null for a column no peer acknowledged), strictly decoded."""

from __future__ import annotations

import os
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptree import packrecord
from cryptree._slotbox import seal_into_slot
from cryptree.errors import CryptreeError, FormatError
from cryptree.packrecord import PackRecord, open_pack_record, pack_write_cap, seal_pack_record

CAP = pack_write_cap(b"k" * 32, b"n" * 16)
LAYOUT = {"v": 1, "pack_id": b"\x00" * 32}  # cryptree does not look inside; PackLayout.from_dict does
A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def _sealed_body(body: Any) -> Any:
    return seal_into_slot(CAP, 1, cbor2.dumps(body), packrecord._RECORD_DOMAIN, "file", "pack record")


def _version(slot) -> int:
    from cryptree._slotbox import open_from_slot

    return cbor2.loads(open_from_slot(CAP, slot, packrecord._RECORD_DOMAIN, "file", "pack record"))[0]


def test_a_complete_record_is_written_as_v1_so_older_readers_still_read_it() -> None:
    record = PackRecord(LAYOUT, (A, B, C))
    slot = seal_pack_record(CAP, 3, record)
    assert _version(slot) == 1
    assert open_pack_record(CAP.read_cap(), slot) == (3, record)


def test_a_column_no_peer_acknowledged_is_null_in_a_v2_record() -> None:
    record = PackRecord(LAYOUT, (A, None, C))
    slot = seal_pack_record(CAP, 1, record)
    assert _version(slot) == 2
    _, back = open_pack_record(CAP.read_cap(), slot)
    assert back == record and back.missing == [1]


def test_one_peer_for_two_columns_is_never_written_and_refused_in_v2() -> None:
    with pytest.raises(FormatError):
        seal_pack_record(CAP, 1, PackRecord(LAYOUT, (A, B, A)))
    with pytest.raises(FormatError):
        seal_pack_record(CAP, 1, PackRecord(LAYOUT, (A, None, A)))
    with pytest.raises(FormatError):
        open_pack_record(CAP, _sealed_body([2, LAYOUT, [A, None, A]]))


def test_v1_records_of_older_clients_still_open_even_with_a_peer_named_twice() -> None:
    _, record = open_pack_record(CAP, _sealed_body([1, LAYOUT, [A, B, A]]))
    assert record.peers == (A, B, A) and record.missing == []


@pytest.mark.parametrize("body", [
    [1, LAYOUT, [A, None, C]],  # null is v2 only
    [3, LAYOUT, [A, B, C]],  # unknown version
    [True, LAYOUT, [A, B, C]],
    [2, LAYOUT, []],
    [2, LAYOUT, [A, b"short", C]],
    [2, LAYOUT, [A, 0, C]],
    [2, LAYOUT, [A, [], C]],
    [2, LAYOUT, {"peers": [A]}],
    [2, [], [A]],
    [2, LAYOUT, [None] * 257],
    [2, LAYOUT],
])
def test_malformed_records_raise_format_error(body: Any) -> None:
    with pytest.raises(FormatError):
        open_pack_record(CAP, _sealed_body(body))


peer_values = st.one_of(st.none(), st.just(A), st.just(B), st.binary(max_size=40), st.integers(), st.booleans(),
                        st.text(max_size=3), st.lists(st.none(), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=-1, max_value=4), st.lists(peer_values, max_size=6))
def test_hostile_peer_lists_are_a_format_error_or_a_valid_record(version: int, peers: list[Any]) -> None:
    try:
        _, record = open_pack_record(CAP, _sealed_body([version, LAYOUT, peers]))
    except CryptreeError:
        return
    assert all(p is None or (type(p) is bytes and len(p) == 32) for p in record.peers)
    if None in record.peers:
        named = [p for p in record.peers if p is not None]
        assert len(named) == len(set(named))


def test_random_bytes_are_refused_cleanly() -> None:
    for _ in range(50):
        slot = seal_into_slot(CAP, 1, os.urandom(40), packrecord._RECORD_DOMAIN, "file", "pack record")
        with pytest.raises(CryptreeError):
            open_pack_record(CAP, slot)
