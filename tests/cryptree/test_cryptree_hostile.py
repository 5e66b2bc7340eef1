"""Hostile plaintext: validly sealed by someone who does not follow the format.

A writer (a folder someone shared, a buggy client) can seal anything under a
key we hold. Whatever it seals must come out as a CryptreeError, never a
KeyError/TypeError/AttributeError, and never a hang or a huge allocation.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptree import _cbor
from cryptree._slotbox import seal_into_slot
from cryptree.caps import new_write_cap
from cryptree.dirnode import (
    DirEntry,
    Symlink,
    decode_directory,
    encode_directory,
    link_child,
    new_directory_cap,
    open_directory,
)
from cryptree.errors import CryptreeError, FormatError
from cryptree.filenode import (
    ChunkRef,
    FileNode,
    FileRef,
    InlineData,
    Manifest,
    decode_manifest,
    encode_manifest,
    new_file_key,
    open_file_slot,
    seal_file_slot,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.binary(max_size=80),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=12), st.dictionaries(st.text(max_size=5), inner, max_size=5)),
    max_leaves=40,
)


def _valid_directory_value() -> list[Any]:
    parent = new_directory_cap()
    ref = ChunkRef(b"\x01" * 32, 10, b"\x02" * 32, b"\x03" * 32, b"loc")
    entries = [
        DirEntry("a", InlineData(b"xy"), size=2, xattrs={"user.k": b"v"}),
        DirEntry("b", FileRef.seal(new_file_key(), Manifest.of([ref])), size=10),
        DirEntry("c", link_child(parent, new_directory_cap())),
        DirEntry("d", Symlink(b"t"), size=1),
    ]
    return cbor2.loads(encode_directory(entries))


VALID_DIR = _valid_directory_value()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    return out


DIR_PATHS = _paths(VALID_DIR)


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value = copy.deepcopy(value)
    node = value
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = new
    return value


def _expect_clean(fn, data: bytes) -> None:
    with contextlib.suppress(CryptreeError):
        fn(data)


@SETTINGS
@given(values)
def test_random_values_as_directory(value: Any) -> None:
    _expect_clean(lambda d: decode_directory(1, d), cbor2.dumps(value))


@SETTINGS
@given(st.sampled_from(DIR_PATHS), values)
def test_mutated_directory(path: tuple, new: Any) -> None:
    _expect_clean(lambda d: decode_directory(1, d), cbor2.dumps(_replace(VALID_DIR, path, new)))


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_as_directory(data: bytes) -> None:
    _expect_clean(lambda d: decode_directory(1, d), data)


def test_valid_directory_value_decodes() -> None:
    assert len(decode_directory(1, cbor2.dumps(VALID_DIR)).entries) == 4


VALID_MANIFEST = cbor2.loads(
    encode_manifest(Manifest.of([ChunkRef(b"\x01" * 32, 10, b"\x02" * 32, b"\x03" * 32, b"loc")] * 2))
)
MANIFEST_PATHS = _paths(VALID_MANIFEST)


@SETTINGS
@given(st.sampled_from(MANIFEST_PATHS), values)
def test_mutated_manifest(path: tuple, new: Any) -> None:
    _expect_clean(decode_manifest, cbor2.dumps(_replace(VALID_MANIFEST, path, new)))


@SETTINGS
@given(values)
def test_random_values_as_manifest(value: Any) -> None:
    _expect_clean(decode_manifest, cbor2.dumps(value))


@pytest.mark.parametrize(
    "value",
    [
        cbor2.CBORTag(0, "2020-01-01T00:00:00Z"),  # datetime
        cbor2.CBORTag(2, b"\x01" * 20),  # bignum
        cbor2.CBORTag(258, [1, 2]),  # set
        cbor2.CBORTag(28, [1]),  # shareable: could build cycles
        cbor2.CBORTag(9999, b""),
        [1, None, [cbor2.CBORTag(1, 0)]],
    ],
)
def test_tags_refused(value: Any) -> None:
    with pytest.raises(FormatError):
        decode_directory(1, cbor2.dumps(value))


def test_depth_and_duplicates_refused() -> None:
    with pytest.raises(FormatError):
        _cbor.loads(b"\x81" * 100 + b"\x00", "x")
    with pytest.raises(FormatError):
        _cbor.loads(b"\xa2\x61a\x01\x61a\x02", "x")  # {"a": 1, "a": 2}
    with pytest.raises(FormatError):
        _cbor.loads(b"\x9f\x01\xff", "x")  # indefinite-length array
    with pytest.raises(FormatError):
        _cbor.loads(b"\x01\x02", "x")  # trailing data


def test_hostile_directory_through_a_real_slot() -> None:
    # The full path: signature and AEAD fine, content malformed.
    cap = new_directory_cap()
    for body in (b"", b"\xff", cbor2.dumps([1, None, [["a", 0]]]), cbor2.dumps([2, None, []])):
        slot = seal_into_slot(cap, 1, body, b"pluto/v1/dir", "dir", "directory")
        with pytest.raises(FormatError):
            open_directory(cap.read_cap(), slot)


def test_hostile_file_slot() -> None:
    cap = new_write_cap("file")
    node = FileNode(3, InlineData(b"abc"))
    assert open_file_slot(cap.read_cap(), seal_file_slot(cap, 1, node)) == node
    for body in (cbor2.dumps([1, 4, [0, b"abc"]]), cbor2.dumps([1, 3, [7]]), cbor2.dumps([1, -1, [0, b""]])):
        slot = seal_into_slot(cap, 2, body, b"pluto/v1/file-slot", "file", "file node")
        with pytest.raises(FormatError):
            open_file_slot(cap, slot)
