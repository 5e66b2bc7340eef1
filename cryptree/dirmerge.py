"""Merging folder versions from several writers, entry by entry, the same way on every device.

A folder can be changed by several writers at once: a user's devices,
followers with write access, two mounts. Each writer publishes with
compare-and-swap on the folder's slot; the one that loses the race reads the
newer version and merges it with its own (and readers merge sibling versions
left by an interrupted write). The rules, per name, from the entries'
version vectors (cryptree/versions.py):

- one version descends from the other: the newer one wins (an edit, a
  delete or a rename seen by the other writer is taken as it is);
- concurrent and one of them is a deletion: the edit wins (a delete never
  silently drops a change it did not see);
- concurrent edits that agree on the content (both set the same bytes, or
  only attributes differ): one entry, attributes from the newer change;
- concurrent edits that disagree: the version with the newer mtime keeps the
  name, the other becomes a conflict copy next to it, named like Syncthing's
  ``report.pluto-conflict-20261202-130501-7f3a2b1c.odt`` (the loser's mtime
  in UTC, and the writer tag of the device that made it).

Every rule is symmetric and uses only the two versions, so any two devices
merging the same versions get the same folder, and merging is commutative.
Deletions are kept as tombstones (name, time, version) for
TOMBSTONE_TTL_NS; a writer that stays away longer than that and still holds
an old copy of a deleted name brings it back (never the reverse: nothing is
lost).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from cryptree import versions
from cryptree.dirnode import (
    MAX_NAME_BYTES,
    DirAttrs,
    Directory,
    DirEntry,
    DirLink,
    Tombstone,
    encode_entry,
)
from cryptree.versions import Order, Version

TOMBSTONE_TTL_NS = 30 * 86400 * 10**9  # deleted names are remembered for 30 days
MAX_TOMBSTONES = 10_000  # per folder; the oldest go first beyond this
CONFLICT_MARK = ".pluto-conflict-"

Side = DirEntry | Tombstone | None
Which = Literal["a", "b"]


@dataclass(frozen=True)
class Outcome:
    """What one name becomes when two versions of it meet."""

    winner: Which | None  # whose entry keeps the name; None: the name stays deleted (`tombstone`)
    version: Version  # the version the name carries from now on
    tombstone: Tombstone | None = None
    loser: Which | None = None  # a concurrent edit that lost: it moves to a conflict copy


def same_content(a: DirEntry, b: DirEntry) -> bool:
    """Whether two entries hold the same thing (same bytes, same folder, same link target)."""
    if a.kind != b.kind:
        return False
    if isinstance(a.child, DirLink) and isinstance(b.child, DirLink):
        return a.child.cap == b.child.cap  # the wrapped write key is re-sealed at random each time
    return a.child == b.child and a.size == b.size


def _conflict_key(e: DirEntry) -> tuple[int, int, bytes, Version]:
    last = versions.last_writer(e.version) or (b"", 0)
    return (e.mtime_ns, last[1], last[0], e.version)


def _attr_key(e: DirEntry) -> tuple[int, int, bytes]:
    return (e.ctime_ns, e.mtime_ns, encode_entry(e))


def resolve(a: Side, b: Side, a_pending: bool = False, b_pending: bool = False) -> Outcome:
    """The outcome for one name seen as `a` by one side and `b` by the other.

    `*_pending` marks an entry whose new content is not on the network yet
    (a file still uploading): it never counts as the same content as anything.
    """
    if a is None or b is None:
        if a is None and b is None:
            raise ValueError("resolve needs at least one side")
        side: Which = "b" if a is None else "a"
        present = b if a is None else a
        assert present is not None
        if isinstance(present, Tombstone):
            return Outcome(None, present.version, present)
        return Outcome(side, present.version)
    order = versions.compare(a.version, b.version)
    if order is Order.AFTER:
        return _take("a", a)
    if order is Order.BEFORE:
        return _take("b", b)
    if order is Order.EQUAL:
        if isinstance(a, Tombstone) or isinstance(b, Tombstone):
            return _take("b", b) if isinstance(a, Tombstone) else _take("a", a)
        if a_pending != b_pending:
            return _take("a", a) if a_pending else _take("b", b)
        return _take("a", a) if _attr_key(a) >= _attr_key(b) else _take("b", b)
    both = versions.merged(a.version, b.version)
    if isinstance(a, Tombstone) and isinstance(b, Tombstone):
        return Outcome(None, both, Tombstone(a.name, max(a.deleted_ns, b.deleted_ns), both))
    if isinstance(a, Tombstone):
        return Outcome("b", both)  # the edit wins over a delete it never saw
    if isinstance(b, Tombstone):
        return Outcome("a", both)
    if not a_pending and not b_pending and same_content(a, b):
        return Outcome("a" if _attr_key(a) >= _attr_key(b) else "b", both)
    if _conflict_key(a) >= _conflict_key(b):
        return Outcome("a", both, loser="b")
    return Outcome("b", both, loser="a")


def _take(which: Which, side: DirEntry | Tombstone) -> Outcome:
    if isinstance(side, Tombstone):
        return Outcome(None, side.version, side)
    return Outcome(which, side.version)


def conflict_copy_version(version: Version) -> Version:
    """The version of a conflict copy: the last change of the version that lost, and nothing else."""
    last = versions.last_writer(version)
    return () if last is None else (last,)


def conflict_name(entry: DirEntry, attempt: int = 1) -> str:
    """The name of `entry`'s conflict copy: stem.pluto-conflict-DATE-TIME-WRITER[-N].ext.

    DATE-TIME is the entry's mtime in UTC and WRITER the first 8 hex digits
    of the tag of the device that changed it last; `attempt` > 1 adds -N
    when that name is taken. Never longer than a name may be.
    """
    last = versions.last_writer(entry.version)
    writer = last[0].hex()[:8] if last else "00000000"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(entry.mtime_ns // 10**9))
    stem, ext = entry.name, ""
    if entry.kind == "file" and "." in entry.name[1:]:
        cut = entry.name.rindex(".")
        stem, ext = entry.name[:cut], entry.name[cut:]
    mark = f"{CONFLICT_MARK}{stamp}-{writer}" + (f"-{attempt}" if attempt > 1 else "")
    if len((mark + ext).encode()) > MAX_NAME_BYTES // 2:
        ext = ""  # an absurdly long extension is not worth keeping
    room = MAX_NAME_BYTES - len((mark + ext).encode())
    return stem.encode()[:room].decode("utf-8", "ignore") + mark + ext


def newer_attrs(a: DirAttrs | None, b: DirAttrs | None) -> DirAttrs | None:
    """A folder's own attributes after a merge: the more recent change wins."""
    if a is None or b is None:
        return a if b is None else b
    key_a = (a.ctime_ns, a.mtime_ns, repr(sorted(a.xattrs.items())), a.mode, a.uid, a.gid, a.atime_ns)
    key_b = (b.ctime_ns, b.mtime_ns, repr(sorted(b.xattrs.items())), b.mode, b.uid, b.gid, b.atime_ns)
    return a if key_a >= key_b else b


def _names(d: Directory) -> dict[str, DirEntry | Tombstone]:
    """Every name of `d`, live or deleted (a folder never holds one name as both)."""
    out: dict[str, DirEntry | Tombstone] = {t.name: t for t in d.tombstones}
    out.update((e.name, e) for e in d.entries)
    return out


def merge_directories(x: Directory, y: Directory) -> Directory:
    """The merge of two versions of one folder (commutative; sequence number: the larger)."""
    xs = _names(x)
    ys = _names(y)
    entries: dict[str, DirEntry] = {}
    tombstones: dict[str, Tombstone] = {}
    losers: list[DirEntry] = []
    for name in sorted(xs.keys() | ys.keys()):
        a, b = xs.get(name), ys.get(name)
        out = resolve(a, b)
        if out.winner is None:
            assert out.tombstone is not None
            tombstones[name] = out.tombstone
        else:
            kept = a if out.winner == "a" else b
            assert isinstance(kept, DirEntry)
            entries[name] = kept if kept.version == out.version else replace(kept, version=out.version)
        if out.loser is not None:
            lost = a if out.loser == "a" else b
            assert isinstance(lost, DirEntry)
            losers.append(lost)
    place_conflict_copies(entries, tombstones.keys(), losers)
    return Directory(max(x.seq, y.seq), newer_attrs(x.attrs, y.attrs),
                     tuple(sorted(entries.values(), key=lambda e: e.name.encode())),
                     tuple(sorted(tombstones.values(), key=lambda t: t.name.encode())))


def place_conflict_copies(entries: dict[str, DirEntry], deleted: Iterable[str], losers: list[DirEntry]) -> None:
    """Add each losing entry to `entries` under its conflict name (a copy already there is not repeated)."""
    taken = set(entries) | set(deleted)
    for lost in sorted(losers, key=lambda e: e.name.encode()):
        copy = replace(lost, version=conflict_copy_version(lost.version))
        for attempt in range(1, 1000):
            name = conflict_name(copy, attempt)
            there = entries.get(name)
            if there is not None and same_content(there, copy):
                break  # an earlier merge of the same versions made this copy already
            if name not in taken:
                entries[name] = replace(copy, name=name)
                taken.add(name)
                break


def merge_all(versions_: Iterable[Directory]) -> Directory:
    """Several sibling versions merged into one, independent of the order they arrived in."""
    items = list(versions_)
    if not items:
        raise ValueError("merge_all needs at least one version")
    items.sort(key=lambda d: (d.seq, [encode_entry(e) for e in d.entries], [t.name for t in d.tombstones]))
    out = items[0]
    for other in items[1:]:
        out = merge_directories(out, other)
    return out


def prune_tombstones(tombstones: Iterable[Tombstone], now_ns: int) -> list[Tombstone]:
    """The tombstones still worth keeping: younger than TOMBSTONE_TTL_NS, at most MAX_TOMBSTONES (newest)."""
    kept = [t for t in tombstones if now_ns - t.deleted_ns < TOMBSTONE_TTL_NS]
    if len(kept) > MAX_TOMBSTONES:
        kept = sorted(kept, key=lambda t: (t.deleted_ns, t.name), reverse=True)[:MAX_TOMBSTONES]
    return kept




def versioned_update(before: Directory, after: dict[str, DirEntry], tag: bytes, now_ns: int,
                     attrs: DirAttrs | None) -> Directory:
    """The folder `before` changed into the entries `after` by the device `tag`, with versions to match.

    Entries that are new or differ from `before` get a version that descends
    from whatever stood at their name (an entry or a tombstone) and carries
    this change; names that disappeared become tombstones. The sequence
    number stays `before`'s: the caller writes it as the next one.
    """
    old = before.by_name()
    dead = {t.name: t for t in before.tombstones}
    entries: list[DirEntry] = []
    for name, entry in after.items():
        prev = old.get(name)
        if prev is not None and (entry is prev or entry == prev):
            entries.append(prev)
            continue
        base = prev.version if prev is not None else dead[name].version if name in dead else ()
        entries.append(replace(entry, name=name, version=versions.bumped(versions.merged(base, entry.version), tag)))
        dead.pop(name, None)
    for name, prev in old.items():
        if name not in after:
            dead[name] = Tombstone(name, now_ns, versions.bumped(prev.version, tag))
    return Directory(before.seq, attrs, tuple(sorted(entries, key=lambda e: e.name.encode())),
                     tuple(sorted(prune_tombstones(dead.values(), now_ns), key=lambda t: t.name.encode())))


__all__ = [
    "CONFLICT_MARK", "MAX_TOMBSTONES", "TOMBSTONE_TTL_NS", "Outcome", "conflict_copy_version",
    "conflict_name", "merge_all", "merge_directories", "newer_attrs", "place_conflict_copies",
    "prune_tombstones", "resolve", "same_content", "versioned_update",
]
