"""Packs: sealed chunks batched into few large objects, then segmented and erasure coded.

Pipeline (pure computation, no I/O):

    PackBuilder.add(chunk_id, sealed) ... -> finish() -> Pack (bytes + entries)
    encode_pack(pack.data, k, n, segment_size) -> (PackLayout, fragments)
    fragments[s][i] goes to the i-th of the pack's n peers, addressed by
    layout.segments[s].fragment_ids[i] (its BLAKE3 Merkle root)
    read_range / decode_pack_range rebuild any byte range from any k
    verified fragments of each segment it touches

A pack is only the concatenation of sealed chunks: no header, no index, no
magic. Where a chunk lives is recorded as a locator (pack id, offset, length)
in the file manifest, which is itself sealed, so a pack alone says nothing,
not even how many chunks it holds.

Pack id = BLAKE3 (derive-key mode, a pluto-specific context) of the pack
bytes. Why content-derived rather than random:
  * locators name the content, not an encoding: a pack re-encoded with other
    k/n or segment size, or repaired onto new peers, keeps its id, so no
    manifest has to change;
  * a whole-pack decode (repair, scrub) can check the result end to end
    before re-encoding it, so a bad decode is never spread to new peers;
  * it is recomputable after a crash, so a resumed upload is idempotent.
It reveals nothing a random id would not: it is a hash of ciphertext that
embeds fresh nonces, and the fragment ids peers see are content-derived
anyway. The derive-key context keeps it disjoint from Merkle node hashes.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import blake3

from cryptree.merkle import HASH_SIZE, merkle_root
from pluto_fs.errors import PlutoError
from pluto_fs.store.erasure import (
    Buffer,
    ErasureError,
    InvalidFragment,
    NotEnoughFragments,
    check_params,
    decode_segment_views,
    encode_segment,
    fragment_size,
)

KiB = 1024
MiB = 1024 * KiB

DEFAULT_PACK_SIZE = 8 * MiB
DEFAULT_SEGMENT_SIZE = 1 * MiB
# The erasure code a new home gets unless `pluto init --k/--n` says otherwise (3-of-5: the demo
# grid's size; docs/SIMULATION.md has what wider codes buy on a real grid).
DEFAULT_K = 3
DEFAULT_N = 5

# Hard bounds, also applied to layouts read back from storage: they keep a
# hostile layout from making a reader allocate or loop without limit.
MAX_PACK_SIZE = 1024 * MiB
MAX_SEGMENT_SIZE = 64 * MiB

CHUNK_ID_SIZE = 32
PACK_ID_SIZE = 32
LAYOUT_VERSION = 1
_PACK_ID_CONTEXT = "pluto 2025 pack id v1"

Locator = tuple[int, int]  # (offset, length) of a sealed chunk inside its pack


def happy_for(k: int, n: int) -> int:
    """Fragment columns that must be placed before a pack counts as stored, for a k-of-n code.

    k + 1 (at most n): the pack is readable from the moment it is acknowledged
    even if one of its peers then goes away; the columns still missing are
    placed later (pluto_fs/volume/short_packs.py).
    """
    return min(n, k + 1)


DEFAULT_HAPPY = happy_for(DEFAULT_K, DEFAULT_N)


class PackError(PlutoError):
    """Base class of every error raised by this module."""


class PackFullError(PackError):
    """The builder is full (or finished); start a new pack."""


class LayoutError(PackError, ValueError):
    """A pack layout (or the parameters to build one) is malformed or inconsistent."""


class RangeError(PackError, ValueError):
    """A byte range does not lie inside the pack."""


def pack_id_of(data: Buffer) -> bytes:
    """The 32-byte id of a pack: keyed-context BLAKE3 of its bytes."""
    return blake3.blake3(data, derive_key_context=_PACK_ID_CONTEXT).digest()


def verify_fragment(fragment_id: bytes, data: Buffer) -> bool:
    """True iff `data` is exactly the fragment whose id (Merkle root) is `fragment_id`."""
    if not isinstance(fragment_id, bytes) or len(fragment_id) != HASH_SIZE:
        return False
    try:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
    except TypeError:
        return False  # not bytes-like: certainly not the fragment
    return hmac.compare_digest(merkle_root(view), fragment_id)


# --------------------------------------------------------------------------
# Building packs


@dataclass(frozen=True)
class PackEntry:
    """One sealed chunk inside a pack (kept client-side, never in the pack)."""

    chunk_id: bytes
    offset: int
    length: int


@dataclass(frozen=True)
class Pack:
    """A finished pack: its id, its bytes, and where each chunk landed."""

    pack_id: bytes
    data: bytes
    entries: tuple[PackEntry, ...]


class PackBuilder:
    """Accumulates sealed chunks until about `target_size` bytes, then yields a Pack.

    The builder never splits a chunk, so a pack ends at the first chunk that
    reaches the target: at most target_size + (largest chunk - 1) bytes.
    Callers that want packs to stay under the target check `fits()` first.
    Single use: after `finish()` make a new builder.
    """

    def __init__(self, target_size: int = DEFAULT_PACK_SIZE) -> None:
        """Start an empty pack that counts as full at `target_size` bytes."""
        if not _is_int(target_size) or not 1 <= target_size <= MAX_PACK_SIZE:
            raise ValueError(f"target_size must be an int in 1..{MAX_PACK_SIZE}, got {target_size!r}")
        self.target_size = target_size
        self._parts: list[bytes] = []
        self._entries: list[PackEntry] = []
        self._by_id: dict[bytes, int] = {}  # chunk id -> index of its first entry
        self._size = 0
        self._finished = False

    @property
    def size(self) -> int:
        """Bytes added so far."""
        return self._size

    @property
    def count(self) -> int:
        """Number of entries so far."""
        return len(self._entries)

    @property
    def full(self) -> bool:
        """True once the pack reached its target size; `add` then refuses."""
        return self._size >= self.target_size

    def fits(self, length: int) -> bool:
        """Whether a chunk of `length` bytes keeps the pack within its target (always true when empty)."""
        return not self._entries or self._size + length <= self.target_size

    def add(self, chunk_id: bytes, sealed: Buffer) -> Locator:
        """Append a sealed chunk; return its (offset, length) inside the pack.

        Adding the same chunk id with identical bytes again returns the first
        locator instead of storing a second copy. The same id with different
        bytes (the chunk sealed again under another key) is stored as its own
        entry: each locator must point at the bytes its manifest can decrypt.
        """
        if self._finished:
            raise PackFullError("pack already finished; use a new PackBuilder")
        if self.full:
            raise PackFullError(f"pack is full ({self._size} >= {self.target_size} bytes); finish it")
        if not isinstance(chunk_id, bytes) or len(chunk_id) != CHUNK_ID_SIZE:
            raise ValueError(f"chunk_id must be {CHUNK_ID_SIZE} bytes")
        if not isinstance(sealed, (bytes, bytearray, memoryview)):
            raise TypeError(f"sealed chunk must be bytes-like, not {type(sealed).__name__}")
        # bytes() is free for bytes and freezes a mutable buffer the caller may reuse.
        blob = bytes(sealed)
        if not blob:
            raise ValueError("a sealed chunk is never empty")
        if self._size + len(blob) > MAX_PACK_SIZE:
            raise PackFullError(f"chunk would push the pack past {MAX_PACK_SIZE} bytes")
        first = self._by_id.get(chunk_id)
        if first is not None and self._parts[first] == blob:
            seen = self._entries[first]
            return seen.offset, seen.length
        entry = PackEntry(chunk_id, self._size, len(blob))
        self._by_id.setdefault(chunk_id, len(self._entries))
        self._parts.append(blob)  # parts and entries share indices
        self._entries.append(entry)
        self._size += len(blob)
        return entry.offset, entry.length

    def finish(self) -> Pack:
        """Close the pack and return it; an empty builder is an error (nothing to upload)."""
        if self._finished:
            raise PackFullError("pack already finished")
        if not self._entries:
            raise PackError("cannot finish an empty pack")
        self._finished = True
        data = b"".join(self._parts)  # the one copy of the chunks into the pack
        self._parts = []
        return Pack(pack_id_of(data), data, tuple(self._entries))


# --------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class SegmentLayout:
    """One segment: its real length and the ids of its n fragments, in fragment order."""

    length: int
    fragment_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class SegmentRange:
    """Part of a byte range that falls in one segment: bytes [start, stop) of segment `index`."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class PackLayout:
    """How a pack is stored: enough to fetch, verify, decode and repair it.

    Construction validates everything (types, bounds, and that segment
    lengths add up), so a PackLayout in hand is always self-consistent.
    """

    pack_id: bytes
    length: int
    k: int
    n: int
    segment_size: int
    segments: tuple[SegmentLayout, ...]

    def __post_init__(self) -> None:
        _check_id("pack_id", self.pack_id)
        _check_geometry(self.length, self.k, self.n, self.segment_size)
        if not isinstance(self.segments, tuple):
            raise LayoutError("segments must be a tuple")
        count = _segment_count(self.length, self.segment_size)
        if len(self.segments) != count:
            raise LayoutError(f"a {self.length}-byte pack in {self.segment_size}-byte segments has "
                              f"{count} segments, layout lists {len(self.segments)}")
        for index, seg in enumerate(self.segments):
            want = min(self.segment_size, self.length - index * self.segment_size)
            if not isinstance(seg, SegmentLayout):
                raise LayoutError(f"segment {index} is not a SegmentLayout")
            if not _is_int(seg.length) or seg.length != want:
                raise LayoutError(f"segment {index} length must be {want}, got {seg.length!r}")
            if not isinstance(seg.fragment_ids, tuple) or len(seg.fragment_ids) != self.n:
                raise LayoutError(f"segment {index} must list exactly n={self.n} fragment ids")
            for num, fid in enumerate(seg.fragment_ids):
                _check_id(f"segment {index} fragment {num} id", fid)

    def segment_offset(self, index: int) -> int:
        """Offset of segment `index` inside the pack."""
        return index * self.segment_size

    def fragment_length(self, index: int) -> int:
        """Exact size of every fragment of segment `index`: bounds what a peer may send."""
        return fragment_size(self.segments[index].length, self.k)

    def to_dict(self) -> dict[str, Any]:
        """A CBOR-ready dict (str keys, ints, bytes, lists); inverse of `from_dict`."""
        return {
            "v": LAYOUT_VERSION,
            "pack_id": self.pack_id,
            "length": self.length,
            "k": self.k,
            "n": self.n,
            "segment_size": self.segment_size,
            "segments": [[seg.length, list(seg.fragment_ids)] for seg in self.segments],
        }

    @classmethod
    def from_dict(cls, obj: object) -> PackLayout:
        """Parse a dict from `to_dict` (e.g. CBOR from storage); hostile input raises LayoutError only."""
        if not isinstance(obj, dict):
            raise LayoutError(f"layout must be a dict, not {type(obj).__name__}")
        keys = set(obj)
        if keys != _LAYOUT_KEYS:
            missing = sorted(_LAYOUT_KEYS - keys)
            extra = sorted(_short_repr(key) for key in keys - _LAYOUT_KEYS)
            raise LayoutError(f"layout keys wrong: missing {missing}, unexpected {extra[:5]}")
        if not _is_int(obj["v"]) or obj["v"] != LAYOUT_VERSION:
            raise LayoutError(f"unsupported layout version {_short_repr(obj['v'])}")
        raw = obj["segments"]
        if not isinstance(raw, (list, tuple)):
            raise LayoutError("segments must be a list")
        # Check the count before touching the entries, so junk fails fast.
        _check_geometry(obj["length"], obj["k"], obj["n"], obj["segment_size"])
        if len(raw) != _segment_count(obj["length"], obj["segment_size"]):
            raise LayoutError("wrong number of segments for the pack length and segment size")
        segments = []
        for index, item in enumerate(raw):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise LayoutError(f"segment {index} must be a [length, fragment_ids] pair")
            length, ids = item
            if not isinstance(ids, (list, tuple)):
                raise LayoutError(f"segment {index} fragment ids must be a list")
            segments.append(SegmentLayout(length, tuple(ids)))
        return cls(obj["pack_id"], obj["length"], obj["k"], obj["n"], obj["segment_size"], tuple(segments))


_LAYOUT_KEYS = frozenset({"v", "pack_id", "length", "k", "n", "segment_size", "segments"})


# --------------------------------------------------------------------------
# Encoding and decoding


def split_segments(pack_bytes: Buffer, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[memoryview]:
    """Cut a pack into segments of `segment_size` bytes (the last one shorter); views, no copy."""
    if not _is_int(segment_size) or not 1 <= segment_size <= MAX_SEGMENT_SIZE:
        raise LayoutError(f"segment_size must be an int in 1..{MAX_SEGMENT_SIZE}, got {segment_size!r}")
    view = memoryview(pack_bytes).cast("B")
    return [view[off : off + segment_size] for off in range(0, view.nbytes, segment_size)]


def encode_pack(
    pack_bytes: Buffer,
    k: int = DEFAULT_K,
    n: int = DEFAULT_N,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> tuple[PackLayout, list[list[bytes]]]:
    """Segment and erasure-code a pack.

    Returns the layout and `fragments[s][i]`, fragment i of segment s, whose
    id is `layout.segments[s].fragment_ids[i]`. An empty pack has no segments.
    """
    view = memoryview(pack_bytes).cast("B")
    _check_geometry(view.nbytes, k, n, segment_size)
    segments = []
    fragments = []
    for seg in split_segments(view, segment_size):
        frags = encode_segment(seg, k, n)
        segments.append(SegmentLayout(seg.nbytes, tuple(merkle_root(f) for f in frags)))
        fragments.append(frags)
    layout = PackLayout(pack_id_of(view), view.nbytes, k, n, segment_size, tuple(segments))
    return layout, fragments


def read_range(layout: PackLayout, offset: int, length: int) -> list[SegmentRange]:
    """Which segments (and which bytes of each) hold pack bytes [offset, offset + length).

    These are the only segments whose fragments need fetching. An empty
    range needs none.
    """
    if not (_is_int(offset) and _is_int(length)) or offset < 0 or length < 0 or offset + length > layout.length:
        raise RangeError(f"range ({offset!r}, {length!r}) is not inside a {layout.length}-byte pack")
    ranges = []
    pos, end = offset, offset + length
    while pos < end:
        index, start = divmod(pos, layout.segment_size)
        stop = min(layout.segments[index].length, start + (end - pos))
        ranges.append(SegmentRange(index, start, stop))
        pos += stop - start
    return ranges


def decode_pack_range(
    layout: PackLayout,
    fragments: Mapping[int, Mapping[int, Buffer]],
    offset: int,
    length: int,
    *,
    verify: bool = True,
) -> bytes:
    """Rebuild pack bytes [offset, offset + length) from fragments of the segments it touches.

    `fragments[s]` maps fragment numbers of segment s to their bytes; only
    the segments named by `read_range` are needed, any k fragments each.
    With `verify` (the default; turn it off only for fragments verified on
    arrival) each fragment is checked against its id before use and a bad one
    is skipped, so spare fragments make up for corrupt ones. Raises
    NotEnoughFragments naming the segment and any rejected fragments.
    """
    views: list[memoryview] = []
    for rng in read_range(layout, offset, length):
        usable = _usable_fragments(layout, rng.index, fragments, verify)
        views.extend(decode_segment_views(usable, layout.k, layout.n, layout.segments[rng.index].length,
                                          rng.start, rng.stop))
    return b"".join(views)  # the single copy of the result


def decode_pack(layout: PackLayout, fragments: Mapping[int, Mapping[int, Buffer]], *, verify: bool = True) -> bytes:
    """Rebuild a whole pack and check it against its pack id (for repair and scrubbing).

    Raises LayoutError if the result does not hash to `layout.pack_id`,
    which means the layout itself is wrong: verified fragments cannot be.
    """
    data = decode_pack_range(layout, fragments, 0, layout.length, verify=verify)
    if not hmac.compare_digest(pack_id_of(data), layout.pack_id):
        raise LayoutError("decoded pack does not match its pack id")
    return data


def rebuild_fragments(
    layout: PackLayout,
    index: int,
    fragments: Mapping[int, Buffer],
    wanted: Iterable[int],
    *,
    verify: bool = True,
) -> dict[int, bytes]:
    """Regenerate fragments `wanted` of segment `index` from any k others (repair).

    Encoding is deterministic, so the result must match the ids in the
    layout; it is checked, and a mismatch raises LayoutError rather than
    handing a wrong fragment to a new peer.
    """
    if not _is_int(index) or not 0 <= index < len(layout.segments):
        raise RangeError(f"segment {index!r} not in 0..{len(layout.segments) - 1}")
    wanted = set(wanted)
    if any(not _is_int(num) or not 0 <= num < layout.n for num in wanted):
        raise RangeError(f"fragment numbers must be in 0..{layout.n - 1}")
    seg = layout.segments[index]
    usable = _usable_fragments(layout, index, {index: fragments}, verify)
    data = b"".join(decode_segment_views(usable, layout.k, layout.n, seg.length))
    frags = encode_segment(data, layout.k, layout.n)
    out = {}
    for num in sorted(wanted):
        if merkle_root(frags[num]) != seg.fragment_ids[num]:
            raise LayoutError(f"rebuilt fragment {num} of segment {index} does not match its id")
        out[num] = frags[num]
    return out


def _usable_fragments(
    layout: PackLayout, index: int, fragments: Mapping[int, Mapping[int, Buffer]], verify: bool
) -> Mapping[int, Buffer]:
    """The fragments of segment `index` to decode from: up to k that pass verification."""
    given = fragments.get(index, {}) if isinstance(fragments, Mapping) else None
    if not isinstance(given, Mapping):
        raise InvalidFragment(f"fragments for segment {index} must be a mapping of number -> bytes")
    bad = [num for num in given if not _is_int(num) or not 0 <= num < layout.n]
    if bad:
        raise InvalidFragment(f"segment {index}: fragment numbers {_short_repr(bad)} not in 0..{layout.n - 1}")
    if not verify:
        return given
    ids = layout.segments[index].fragment_ids
    good: dict[int, Buffer] = {}
    rejected = []
    # Primary numbers first (cheapest to decode); stop hashing once k pass.
    for num in sorted(given):
        if len(good) == layout.k:
            break
        if verify_fragment(ids[num], given[num]):
            good[num] = given[num]
        else:
            rejected.append(num)
    if len(good) < layout.k:
        raise NotEnoughFragments(
            f"segment {index}: need {layout.k} verified fragments, got {len(good)} {sorted(good)}"
            + (f"; rejected by Merkle check: {rejected}" if rejected else ""),
            need=layout.k,
            have=tuple(sorted(good)),
        )
    return good


# --------------------------------------------------------------------------
# Validation helpers


def _check_geometry(length: object, k: object, n: object, segment_size: object) -> None:
    """Raise LayoutError unless the pack-wide numbers are ints within bounds."""
    for name, value in (("length", length), ("k", k), ("n", n), ("segment_size", segment_size)):
        if not _is_int(value):
            raise LayoutError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= length <= MAX_PACK_SIZE:  # type: ignore[operator]
        raise LayoutError(f"pack length must be in 0..{MAX_PACK_SIZE}, got {length}")
    if not 1 <= segment_size <= MAX_SEGMENT_SIZE:  # type: ignore[operator]
        raise LayoutError(f"segment_size must be in 1..{MAX_SEGMENT_SIZE}, got {segment_size}")
    try:
        check_params(k, n)  # type: ignore[arg-type]
    except ErasureError as exc:
        raise LayoutError(str(exc)) from None


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise LayoutError(f"{name} must be {HASH_SIZE} bytes")


def _segment_count(length: int, segment_size: int) -> int:
    return -(-length // segment_size)


def _short_repr(value: object) -> str:
    # Error messages must not echo megabytes of hostile input.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

