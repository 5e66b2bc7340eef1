"""Directories: seal/open, cryptree links, and refusal of anything tampered or foreign."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptree.caps import ReadCap, new_write_cap
from cryptree.dirnode import (
    DirAttrs,
    DirEntry,
    DirLink,
    Symlink,
    child_write_cap,
    link_child,
    new_directory_cap,
    open_directory,
    seal_directory,
    validate_name,
)
from cryptree.errors import CapabilityError, CryptreeError, DecryptionError, FormatError, SignatureError
from cryptree.filenode import FileRef, InlineData, Manifest, new_file_key
from cryptree.slot import SignedSlot, sign_slot


def sample_entries(parent, child=None):
    child = child or new_directory_cap()
    return [
        DirEntry("notes.txt", InlineData(b"hello"), mode=0o600, uid=1000, gid=1000,
                 atime_ns=1, mtime_ns=2**62, ctime_ns=-5, size=5, xattrs={"user.tag": b"\x00\xff"}),
        DirEntry("line\nbreak and ünïcödé 🎉", InlineData(b""), size=0),
        DirEntry("big.bin", FileRef.seal(new_file_key(), Manifest.of([])), size=0),
        DirEntry("sub", link_child(parent, child), mode=0o755),
        DirEntry("link", Symlink(b"../target\xff"), mode=0o777, size=10),
    ]  # fmt: skip


def test_round_trip_and_sorting() -> None:
    parent = new_directory_cap()
    entries = sample_entries(parent)
    attrs = DirAttrs(mode=0o700, mtime_ns=123, xattrs={"user.a": b"b"})
    slot = seal_directory(parent, 7, entries, attrs)
    assert slot.writer == parent.writer and slot.seq == 7
    d = open_directory(parent.read_cap(), slot)
    assert d.seq == 7 and d.attrs == attrs
    assert sorted(d.entries, key=lambda e: e.name) == sorted(entries, key=lambda e: e.name)
    assert [e.name.encode() for e in d.entries] == sorted(e.name.encode() for e in entries)
    assert d.get("notes.txt").kind == "file" and d.get("sub").kind == "dir" and d.get("link").kind == "symlink"
    assert d.get("missing") is None and set(d.by_name()) == {e.name for e in entries}
    # A write cap opens too (it implies the read cap).
    assert open_directory(parent, slot).entries == d.entries


def test_empty_directory_and_padding() -> None:
    cap = new_directory_cap()
    small = seal_directory(cap, 0, [])
    assert open_directory(cap.read_cap(), small).entries == () and open_directory(cap, small).attrs is None
    one = seal_directory(cap, 1, [DirEntry("a", InlineData(b"x"), size=1)])
    # Both land in the same 4 KiB bucket: the payload size does not give the entry count away.
    assert len(small.payload) == len(one.payload) == 4096


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.text(min_size=1, max_size=40).filter(lambda n: n not in (".", "..") and "/" not in n and "\0" not in n),
        max_size=8,
        unique=True,
    ).filter(lambda names: all(len(n.encode("utf-8", "surrogatepass")) <= 255 for n in names))
)
def test_unicode_names_round_trip(names: list[str]) -> None:
    names = [n for n in names if not any(0xD800 <= ord(c) <= 0xDFFF for c in n)]
    cap = new_directory_cap()
    entries = [DirEntry(n, InlineData(n.encode()), size=len(n.encode())) for n in names]
    d = open_directory(cap.read_cap(), seal_directory(cap, 1, entries))
    assert {e.name: e.child for e in d.entries} == {e.name: e.child for e in entries}


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "nul\0", "x" * 256, "é" * 128, "\udcff"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(FormatError):
        validate_name(name)
    with pytest.raises(FormatError):
        DirEntry(name, InlineData(b""))


def test_name_limits_accept_edges() -> None:
    assert validate_name("x" * 255) and validate_name("é" * 127 + "x") and validate_name("...") and validate_name("\n")


def test_duplicate_names_refused() -> None:
    cap = new_directory_cap()
    with pytest.raises(FormatError, match="two entries"):
        seal_directory(cap, 1, [DirEntry("a", InlineData(b"")), DirEntry("a", Symlink(b"x"), size=1)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": 0o10000}, {"mode": -1}, {"mode": True}, {"uid": 2**32}, {"gid": -1},
        {"mtime_ns": 2**63}, {"atime_ns": 1.5}, {"size": 3}, {"size": -1},
        {"xattrs": {"": b"x"}}, {"xattrs": {"a": "text"}}, {"xattrs": {"a": b"x" * 65537}},
        {"xattrs": {"a\0b": b""}}, {"xattrs": [("a", b"")]},
    ],
)  # fmt: skip
def test_bad_fields_refused(kwargs: dict) -> None:
    with pytest.raises(FormatError):
        DirEntry("f", InlineData(b"ab"), **{"size": 2, **kwargs})


def test_child_kinds_checked() -> None:
    with pytest.raises(FormatError):
        DirEntry("f", b"raw bytes")  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        Symlink(b"")
    with pytest.raises(FormatError):
        Symlink(b"a\0b")
    with pytest.raises(FormatError):
        InlineData(b"x" * 2049)
    with pytest.raises(FormatError):
        DirLink(new_write_cap("file").read_cap())


# ---- authenticity ---------------------------------------------------------------------------


def test_tampered_payload_rejected() -> None:
    cap = new_directory_cap()
    slot = seal_directory(cap, 3, sample_entries(cap))
    for i in (0, 1, 20, len(slot.payload) - 1):
        bad = bytearray(slot.payload)
        bad[i] ^= 0x01
        forged = dataclasses.replace(slot, payload=bytes(bad))
        with pytest.raises(SignatureError):
            open_directory(cap.read_cap(), forged)


def test_resigned_tampered_ciphertext_rejected() -> None:
    # Someone with the *signing* key but not following the format, or a writer
    # key holder mangling ciphertext: the AEAD still catches it.
    cap = new_directory_cap()
    slot = seal_directory(cap, 3, sample_entries(cap))
    bad = bytearray(slot.payload)
    bad[40] ^= 0x80
    with pytest.raises(DecryptionError):
        open_directory(cap.read_cap(), sign_slot(cap.signing_key, 3, bytes(bad)))


def test_seq_and_signature_are_bound() -> None:
    cap = new_directory_cap()
    slot = seal_directory(cap, 3, [])
    with pytest.raises(SignatureError):
        open_directory(cap, dataclasses.replace(slot, seq=4))
    with pytest.raises(SignatureError):
        open_directory(cap, dataclasses.replace(slot, signature=bytes(64)))
    # Re-signing the same ciphertext under another seq: signature fine, AEAD (aad binds seq) refuses.
    with pytest.raises(DecryptionError):
        open_directory(cap, sign_slot(cap.signing_key, 4, slot.payload))


def test_wrong_cap_rejected() -> None:
    a, b = new_directory_cap(), new_directory_cap()
    slot = seal_directory(a, 1, [])
    # b's cap names another writer: the slot is someone else's node.
    with pytest.raises(SignatureError):
        open_directory(b.read_cap(), slot)
    # Right writer, wrong read key: does not decrypt.
    with pytest.raises(DecryptionError):
        open_directory(ReadCap("dir", a.writer, b.read_key), slot)
    # A file cap is not a directory cap.
    with pytest.raises(CapabilityError):
        open_directory(new_write_cap("file").read_cap(), slot)


def test_ciphertext_moved_to_another_slot_rejected() -> None:
    a = new_directory_cap()
    slot = seal_directory(a, 1, sample_entries(a))
    # An attacker who knows a's read key copies the ciphertext into a slot they sign.
    mallory = new_write_cap("dir")
    moved = sign_slot(mallory.signing_key, 1, slot.payload)
    with pytest.raises(DecryptionError):
        open_directory(ReadCap("dir", mallory.writer, a.read_key), moved)


def test_sealing_requires_write_cap_of_right_kind() -> None:
    cap = new_directory_cap()
    with pytest.raises(CapabilityError):
        seal_directory(cap.read_cap(), 1, [])  # type: ignore[arg-type]
    with pytest.raises(CapabilityError):
        seal_directory(new_write_cap("file"), 1, [])
    with pytest.raises(FormatError):
        seal_directory(cap, -1, [])


def test_not_a_slot_rejected() -> None:
    cap = new_directory_cap()
    with pytest.raises(FormatError):
        open_directory(cap, b"payload")  # type: ignore[arg-type]
    with pytest.raises(SignatureError):
        open_directory(cap, SignedSlot(b"short", 1, b"", b""))


# ---- cryptree links -------------------------------------------------------------------------


def test_child_write_cap_recovered_by_parent_writer() -> None:
    parent, child = new_directory_cap(), new_directory_cap()
    slot = seal_directory(parent, 1, sample_entries(parent, child))
    entry = open_directory(parent.read_cap(), slot).get("sub")
    assert entry.child.cap == child.read_cap()
    assert child_write_cap(parent, entry) == child


def test_read_cap_cannot_get_write_caps() -> None:
    parent, child = new_directory_cap(), new_directory_cap()
    reader = parent.read_cap()
    d = open_directory(reader, seal_directory(parent, 1, sample_entries(parent, child)))
    entry = d.get("sub")
    with pytest.raises(CapabilityError, match="read capability cannot"):
        child_write_cap(reader, entry)  # type: ignore[arg-type]
    # What a reader sees of the child is its read cap and an opaque blob:
    # the child's writer seed appears nowhere in the clear.
    assert entry.child.wrapped_writer is not None
    assert child.writer_seed not in entry.child.wrapped_writer
    assert child.writer_seed not in entry.child.cap.writer + entry.child.cap.read_key
    # A reader cannot seal a new version of the parent either.
    with pytest.raises(CapabilityError):
        seal_directory(reader, 2, [])  # type: ignore[arg-type]


def test_other_parent_cannot_unwrap_child() -> None:
    parent, other, child = new_directory_cap(), new_directory_cap(), new_directory_cap()
    entry = DirEntry("sub", link_child(parent, child))
    with pytest.raises(DecryptionError):
        child_write_cap(other, entry)


def test_wrapped_writer_bound_to_its_child() -> None:
    parent, c1, c2 = new_directory_cap(), new_directory_cap(), new_directory_cap()
    l1, l2 = link_child(parent, c1), link_child(parent, c2)
    # Swapping wrapped seeds between links does not decrypt: the AAD names the child.
    swapped = DirEntry("x", DirLink(l1.cap, l2.wrapped_writer))
    with pytest.raises(DecryptionError):
        child_write_cap(parent, swapped)


def test_read_only_link() -> None:
    parent, child = new_directory_cap(), new_directory_cap()
    entry = DirEntry("shared", link_child(parent, child.read_cap()))
    assert entry.child.wrapped_writer is None
    with pytest.raises(CapabilityError, match="read-only"):
        child_write_cap(parent, entry)
    with pytest.raises(CapabilityError):
        child_write_cap(parent, DirEntry("f", InlineData(b"")))


def test_subfolder_cap_cannot_open_parent() -> None:
    parent, child = new_directory_cap(), new_directory_cap()
    parent_slot = seal_directory(parent, 1, sample_entries(parent, child))
    child_slot = seal_directory(child, 1, [DirEntry("deep", InlineData(b"z"), size=1)])
    # Down the tree works: parent read cap -> child read cap -> child content.
    link = open_directory(parent.read_cap(), parent_slot).get("sub").child
    assert open_directory(link.cap, child_slot).get("deep").child == InlineData(b"z")
    # Up does not: with the child's caps (even the write cap), the parent stays closed.
    for cap in (child, child.read_cap()):
        with pytest.raises(CryptreeError):
            open_directory(cap, parent_slot)
        with pytest.raises(DecryptionError):
            open_directory(ReadCap("dir", parent.writer, cap.read_key), parent_slot)


def test_errors_are_one_line() -> None:
    cap = new_directory_cap()
    slot = seal_directory(cap, 1, [])
    with pytest.raises(CryptreeError) as info:
        open_directory(new_directory_cap(), slot)
    assert "\n" not in str(info.value)
