"""Version vectors: who changed a directory entry, and whether two changes saw each other.

Every entry of a folder carries a version vector: for each device (a short
random writer tag, never a key or an identity) the counter of its last change
to that name. Comparing two vectors tells whether one version descends from
the other (take the newer) or whether they were made without seeing each
other (concurrent: merge, keeping both). This is what Syncthing keeps per file
and Dynamo per key; it lets folder versions from several writers merge entry
by entry with no common ancestor at hand.

A bump sets the device's counter to one more than the largest counter in the
vector, so the device holding the largest counter is the one that changed the
entry last (`last_writer`), which names conflict copies.

A version is a tuple of (tag, counter) pairs sorted by tag: immutable,
hashable and with one canonical encoding.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any

from cryptree import _cbor
from cryptree.errors import FormatError

TAG_SIZE = 8
MAX_TAGS = 256  # writers of one entry; a vector longer than this is refused as corrupt
MAX_COUNTER = 2**63 - 1

Version = tuple[tuple[bytes, int], ...]
EMPTY: Version = ()


class Order(Enum):
    """How two versions relate."""

    EQUAL = "equal"
    BEFORE = "before"  # the first is an ancestor of the second
    AFTER = "after"  # the first descends from the second
    CONCURRENT = "concurrent"  # neither saw the other


def compare(a: Version, b: Version) -> Order:
    """How version `a` relates to version `b`."""
    da, db = dict(a), dict(b)
    a_ahead = any(c > db.get(t, 0) for t, c in da.items())
    b_ahead = any(c > da.get(t, 0) for t, c in db.items())
    if a_ahead and b_ahead:
        return Order.CONCURRENT
    if a_ahead:
        return Order.AFTER
    if b_ahead:
        return Order.BEFORE
    return Order.EQUAL


def merged(*versions: Version) -> Version:
    """The smallest version that descends from all of `versions` (pointwise maximum)."""
    out: dict[bytes, int] = {}
    for version in versions:
        for tag, counter in version:
            if counter > out.get(tag, 0):
                out[tag] = counter
    return _canonical(out.items())


def bumped(version: Version, tag: bytes) -> Version:
    """`version` after a change by the device `tag`: it descends from `version` and from nothing newer."""
    top = max((c for _, c in version), default=0)
    if top >= MAX_COUNTER:
        raise FormatError("version counter overflow; the entry is corrupt")
    return _canonical({**dict(version), tag: top + 1}.items())


def last_writer(version: Version) -> tuple[bytes, int] | None:
    """(tag, counter) of the device that changed the entry last, or None for an empty version."""
    if not version:
        return None
    return max(version, key=lambda tc: (tc[1], tc[0]))


def _canonical(pairs: Iterable[tuple[bytes, int]]) -> Version:
    return tuple(sorted((t, c) for t, c in pairs if c > 0))


def encode(version: Version) -> list[list[Any]]:
    """The CBOR form: [[tag, counter], ...] sorted by tag."""
    return [[t, c] for t, c in version]


def decode(value: Any, what: str) -> Version:
    """Parse a version strictly; FormatError on anything but sorted, unique, well-sized pairs."""
    pairs = _cbor.expect_list(value, None, f"{what} version")
    if len(pairs) > MAX_TAGS:
        raise FormatError(f"{what} version names {len(pairs)} writers, over {MAX_TAGS}; it is corrupt")
    out = []
    for pair in pairs:
        tag, counter = _cbor.expect_list(pair, 2, f"{what} version entry")
        out.append((_cbor.expect_bytes(tag, f"{what} writer tag", size=TAG_SIZE),
                    _cbor.expect_int(counter, 1, MAX_COUNTER, f"{what} version counter")))
    version = tuple(out)
    if version != _canonical(version) or len({t for t, _ in version}) != len(version):
        raise FormatError(f"{what} version is not sorted by writer or repeats one; it is corrupt")
    return version


def check(version: Any, what: str) -> Version:
    """Validate a version given in memory (the same rules as `decode`; on the hot path of every entry)."""
    if type(version) is not tuple or len(version) > MAX_TAGS:
        raise FormatError(f"{what} version must be a tuple of at most {MAX_TAGS} (tag, counter) pairs")
    previous = b""
    for pair in version:
        if (type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not bytes or len(pair[0]) != TAG_SIZE
                or type(pair[1]) is not int or not 1 <= pair[1] <= MAX_COUNTER or pair[0] <= previous):
            raise FormatError(f"{what} version must hold sorted, unique (8-byte tag, counter >= 1) pairs")
        previous = pair[0]
    return version
