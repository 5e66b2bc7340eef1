"""Version vectors and the entry-by-entry merge of folder versions from several writers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptree import versions
from cryptree.dirmerge import conflict_name, merge_all, merge_directories, prune_tombstones, resolve
from cryptree.dirnode import (
    DirAttrs,
    Directory,
    DirEntry,
    Tombstone,
    decode_directory,
    encode_directory,
    link_child,
    new_directory_cap,
    open_directory,
    seal_directory,
)
from cryptree.errors import FormatError
from cryptree.filenode import InlineData
from cryptree.versions import Order

A, B, C = b"A" * 8, b"B" * 8, b"C" * 8


def _file(name: str, data: bytes, version: versions.Version, mtime: int = 1) -> DirEntry:
    return DirEntry(name, InlineData(data), size=len(data), mtime_ns=mtime, ctime_ns=mtime, version=version)


def test_version_vectors_order_descendants_and_spot_concurrent_changes() -> None:
    v1 = versions.bumped((), A)
    v2 = versions.bumped(v1, B)
    assert versions.compare(v2, v1) is Order.AFTER and versions.compare(v1, v2) is Order.BEFORE
    assert versions.compare(v1, v1) is Order.EQUAL
    left, right = versions.bumped(v1, A), versions.bumped(v1, B)
    assert versions.compare(left, right) is Order.CONCURRENT
    both = versions.merged(left, right)
    assert versions.compare(both, left) is Order.AFTER and versions.compare(both, right) is Order.AFTER
    # the device holding the largest counter changed it last
    assert versions.last_writer(versions.bumped(both, C)) == (C, 3)


def test_hostile_versions_are_format_errors() -> None:
    for bad in ([[b"x", 1]], [[A, 0]], [[B, 1], [A, 1]], [[A, 1], [A, 2]], [[A, True]], "ab", [[A, 1, 2]],
                [[i.to_bytes(8, "big"), 1] for i in range(257)]):
        with pytest.raises(FormatError):
            versions.decode(bad, "test")


def test_format_2_round_trips_versions_and_tombstones_and_format_1_still_opens() -> None:
    cap = new_directory_cap()
    entry = _file("a", b"x", versions.bumped((), A))
    dead = Tombstone("gone", 5, versions.bumped((), B))
    opened = open_directory(cap, seal_directory(cap, 7, [entry], DirAttrs(), [dead]))
    assert opened.entries == (entry,) and opened.tombstones == (dead,) and opened.seq == 7
    from cryptree import _cbor
    old = _cbor.dumps([1, None, [["a", 0, 0o644, 0, 0, 0, 1, 1, 1, {}, [0, b"x"]]]])
    assert decode_directory(3, old).entries[0].version == ()
    with pytest.raises(FormatError):  # a name both present and deleted is corrupt
        encode_directory([entry], None, [Tombstone("a", 1, versions.bumped((), B))])


def test_the_newer_version_wins_whole_and_an_edit_beats_a_concurrent_delete() -> None:
    base = versions.bumped((), A)
    old, new = _file("f", b"old", base), _file("f", b"new", versions.bumped(base, B))
    assert resolve(old, new).winner == "b" and resolve(new, old).winner == "a"
    deleted = Tombstone("f", 9, versions.bumped(base, A))
    assert resolve(deleted, old).winner is None  # a delete that saw the entry wins
    edited = _file("f", b"edit", versions.bumped(base, B))
    out = resolve(deleted, edited)
    assert out.winner == "b" and out.loser is None
    assert versions.compare(out.version, deleted.version) is Order.AFTER


def test_concurrent_edits_keep_the_newer_at_the_name_and_a_named_conflict_copy() -> None:
    base = versions.bumped((), A)
    ours = _file("report.odt", b"ours", versions.bumped(base, A), mtime=10**9 * 1_764_680_701)
    theirs = _file("report.odt", b"theirs", versions.bumped(base, B), mtime=10**9 * 1_764_680_702)
    x = Directory(4, None, (ours,))
    y = Directory(5, None, (theirs,))
    merged = merge_directories(x, y)
    assert merged == merge_directories(y, x) and merged.seq == 5
    names = [e.name for e in merged.entries]
    assert names[0] == "report.odt" and merged.entries[0].child == InlineData(b"theirs")
    assert re.fullmatch(r"report\.pluto-conflict-20251202-130501-41414141\.odt", names[1]), names
    assert merged.entries[1].child == InlineData(b"ours")
    # merging the result again with either side changes nothing: no second copy
    assert merge_directories(merged, x).entries == merged.entries
    assert merge_directories(merged, y).entries == merged.entries


def test_conflict_names_stay_legal_for_long_names() -> None:
    long = _file("é" * 120 + ".txt", b"x", versions.bumped((), A))
    name = conflict_name(long, 3)
    assert len(name.encode()) <= 255 and name.endswith("-3.txt")
    DirEntry(name, InlineData(b"x"), size=1)  # a legal name


def test_the_same_folder_created_on_two_devices_keeps_both_folders() -> None:
    parent = new_directory_cap()
    a = DirEntry("photos", link_child(parent, new_directory_cap()), version=versions.bumped((), A))
    b = DirEntry("photos", link_child(parent, new_directory_cap()), version=versions.bumped((), B))
    merged = merge_directories(Directory(1, None, (a,)), Directory(1, None, (b,)))
    assert len(merged.entries) == 2
    assert {e.child.cap for e in merged.entries} == {a.child.cap, b.child.cap}


def test_tombstones_expire() -> None:
    day = 86400 * 10**9
    keep = prune_tombstones([Tombstone("old", 0, ((A, 1),)), Tombstone("new", 40 * day, ((A, 2),))], 45 * day)
    assert [t.name for t in keep] == ["new"]


names = st.sampled_from(["a", "b", "c", "d"])
tags = st.sampled_from([A, B, C])


@st.composite
def histories(draw) -> tuple[Directory, Directory]:
    """Two devices start from one folder and each makes changes without seeing the other's."""
    start: dict[str, DirEntry | Tombstone] = {}
    for name in draw(st.sets(names)):
        start[name] = _file(name, name.encode(), versions.bumped((), C), mtime=1)
    sides = []
    for tag in (A, B):
        state = dict(start)
        for op, name, data, mtime in draw(st.lists(st.tuples(st.sampled_from(["write", "delete"]), names,
                                                              st.binary(max_size=3), st.integers(1, 5)),
                                                    max_size=6)):
            before = state.get(name)
            v = versions.bumped(before.version if before else (), tag)
            state[name] = _file(name, data, v, mtime) if op == "write" else Tombstone(name, mtime, v)
        live = sorted((e for e in state.values() if isinstance(e, DirEntry)), key=lambda e: e.name)
        dead = sorted((e for e in state.values() if isinstance(e, Tombstone)), key=lambda e: e.name)
        sides.append(Directory(draw(st.integers(1, 3)), None, tuple(live), tuple(dead)))
    return sides[0], sides[1]


@settings(max_examples=300, deadline=None)
@given(histories())
def test_merging_is_symmetric_idempotent_and_loses_no_concurrent_write(pair: tuple[Directory, Directory]) -> None:
    x, y = pair
    m = merge_directories(x, y)
    assert m == merge_directories(y, x)
    assert merge_directories(m, m) == m
    assert merge_all([x, y]) == merge_all([y, x])
    # every live entry of either side is still there (at its name or as a conflict copy) unless the
    # other side's version of that name descends from it
    contents = {(e.name.split(".pluto-conflict-")[0], e.child) for e in m.entries}
    for side, other in ((x, y), (y, x)):
        theirs = {e.name: e for e in (*other.entries, *other.tombstones)}
        for e in side.entries:
            o = theirs.get(e.name)
            if o is not None and versions.compare(o.version, e.version) is Order.AFTER:
                continue
            assert (e.name, e.child) in contents, (e, m)
    # and the merge descends from both sides, so either side merging it again takes it whole
    assert merge_directories(m, x).entries == m.entries and merge_directories(m, y).entries == m.entries
