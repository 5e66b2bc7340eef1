"""k-of-n erasure coding of one segment with zfec (Reed-Solomon over GF(2^8)).

A segment of L bytes is zero-padded to k * B bytes, B = ceil(L / k), and cut
into k *primary* blocks; zfec adds n - k *secondary* blocks. Fragment i is
block i; any k distinct fragments rebuild the segment. The code is
systematic: fragments 0..k-1 are the padded segment itself, so a read that
gets all of them back costs no decoding at all.

The real length L is not stored in the fragments (a fragment is opaque bytes
addressed by its Merkle root); the caller keeps it in the pack layout and
passes it back to `decode_segment`, which strips the padding.

Copies: `encode_segment` copies the input exactly once (into the k primary
fragments, which must be immutable `bytes`); zfec writes the secondary
fragments straight into fresh `bytes`. Decoding hands zfec views of the
fragments and joins views of the primary blocks once, so the result is the
only copy. Both release the GIL inside zfec, so callers may run them in a
worker thread.

This module does not authenticate anything: a corrupted fragment decodes to
garbage. Check fragments against their ids (`pluto_fs.store.packs.verify_fragment`)
before decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import zfec

from pluto_fs.errors import PlutoError

MAX_SHARES = 256  # GF(2^8) has 256 evaluation points: zfec's hard limit on n

Buffer = bytes | bytearray | memoryview


class ErasureError(PlutoError):
    """Base class of every error raised by this module."""


class InvalidParameters(ErasureError, ValueError):
    """k, n or a length is out of range."""


class InvalidFragment(ErasureError, ValueError):
    """A fragment has a bad number, type or length for this segment."""


class NotEnoughFragments(ErasureError):
    """Fewer than k distinct usable fragments were available."""

    def __init__(self, message: str, *, need: int = 0, have: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.need = need
        self.have = have


def check_params(k: int, n: int) -> None:
    """Raise InvalidParameters unless 1 <= k <= n <= 256 (ints, not bools)."""
    for name, value in (("k", k), ("n", n)):
        if not _is_int(value):
            raise InvalidParameters(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= k <= n <= MAX_SHARES:
        raise InvalidParameters(f"need 1 <= k <= n <= {MAX_SHARES}, got k={k}, n={n}")


def fragment_size(length: int, k: int) -> int:
    """Size in bytes of every fragment of a segment of `length` bytes coded k-of-n."""
    return -(-length // k)


def encode_segment(data: Buffer, k: int, n: int) -> list[bytes]:
    """Erasure-code one segment into n fragments, any k of which rebuild it.

    Returns the fragments in order (fragment i at index i), each
    `fragment_size(len(data), k)` bytes. Encoding is deterministic, so a
    fragment rebuilt during repair is byte-identical to the lost one and keeps
    its id. An empty segment gives n empty fragments.
    """
    check_params(k, n)
    view = _byte_view(data, InvalidParameters)
    length = view.nbytes
    size = fragment_size(length, k)
    if size == 0:
        return [b""] * n
    if k == 1 and isinstance(data, bytes):
        primaries = [data]  # already immutable and unpadded: no copy at all
    else:
        primaries = []
        for i in range(k):
            piece = view[min(i * size, length) : min((i + 1) * size, length)]
            short = size - piece.nbytes
            # One copy per block: bytes() of a view, or a join that pads the tail.
            primaries.append(bytes(piece) if not short else b"".join((piece, bytes(short))))
    if n == k:
        return primaries
    # Asking only for the secondary blocks keeps zfec from re-wrapping the
    # primaries; a tuple is zfec's fast path for both arguments.
    secondaries = _encoder(k, n).encode(tuple(primaries), tuple(range(k, n)))
    return primaries + secondaries


def decode_segment(fragments: Mapping[int, Buffer], k: int, n: int, length: int) -> bytes:
    """Rebuild a segment of `length` bytes from any k of its n fragments.

    `fragments` maps fragment numbers (0..n-1) to fragment bytes; extra
    fragments beyond k are allowed (primary ones are preferred: they need no
    decoding). Raises NotEnoughFragments if fewer than k are given and
    InvalidFragment if a number or a length is wrong.
    """
    return b"".join(decode_segment_views(fragments, k, n, length))


def decode_segment_views(
    fragments: Mapping[int, Buffer], k: int, n: int, length: int, start: int = 0, stop: int | None = None
) -> list[memoryview]:
    """Views of bytes [start, stop) of the rebuilt segment, for callers that join many ranges.

    Same contract as `decode_segment`; returning views lets a caller that
    stitches a range across segments copy each byte once, in its own join.
    The views may alias the given fragments: use them before mutating those.
    """
    check_params(k, n)
    if not _is_int(length) or length < 0:
        raise InvalidParameters(f"length must be a non-negative int, got {length!r}")
    stop = length if stop is None else stop
    if not (_is_int(start) and _is_int(stop) and 0 <= start <= stop <= length):
        raise InvalidParameters(f"bad range [{start!r}, {stop!r}) of a {length}-byte segment")
    blocks = _primary_blocks(fragments, k, n, length)
    size = fragment_size(length, k)
    views = []
    pos = start
    while pos < stop:
        i, col = divmod(pos, size)
        take = min(size - col, stop - pos)
        views.append(blocks[i][col : col + take])
        pos += take
    return views


def _primary_blocks(fragments: Mapping[int, Buffer], k: int, n: int, length: int) -> list[memoryview]:
    """Validate the fragments and return the k primary blocks (padded), decoding if needed."""
    if not isinstance(fragments, Mapping):
        raise InvalidFragment(f"fragments must be a mapping of number -> bytes, not {type(fragments).__name__}")
    size = fragment_size(length, k)
    views: dict[int, memoryview] = {}
    for num, frag in fragments.items():
        if not _is_int(num) or not 0 <= num < n:
            raise InvalidFragment(f"fragment number {num!r} is not in 0..{n - 1}")
        view = _byte_view(frag, InvalidFragment)
        if view.nbytes != size:
            raise InvalidFragment(
                f"fragment {num} is {view.nbytes} bytes; a {length}-byte segment coded {k}-of-{n} needs {size}"
            )
        views[num] = view
    if len(views) < k:
        have = tuple(sorted(views))
        raise NotEnoughFragments(
            f"need {k} distinct fragments of {n} to decode, got {len(have)}: {list(have)}", need=k, have=have
        )
    # Lowest numbers first: every primary we hold is used as is, so the
    # decoder only recovers the primaries that are actually missing.
    chosen = sorted(views)[:k]
    if chosen[-1] < k:
        return [views[i] for i in range(k)]
    if size == 0:
        return [memoryview(b"")] * k
    # Fresh tuples: zfec reorders the sequences it is given in place.
    blocks = _decoder(k, n).decode(tuple(views[i] for i in chosen), tuple(chosen))
    return [memoryview(b) for b in blocks]


def _byte_view(obj: object, error: type[ErasureError]) -> memoryview:
    """A flat unsigned-byte view of a bytes-like object, or `error`."""
    try:
        view = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        raise error(f"expected a bytes-like object, got {type(obj).__name__}") from None
    if not view.c_contiguous:
        raise error("fragment buffers must be contiguous")
    # Lengths below are in bytes, whatever item format the caller's buffer has.
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# zfec precomputes a matrix per (k, n); keeping a few objects saves that per
# call. Encode and decode only read it, so sharing across threads is safe.
@lru_cache(maxsize=32)
def _encoder(k: int, n: int) -> zfec.Encoder:
    return zfec.Encoder(k, n)


@lru_cache(maxsize=32)
def _decoder(k: int, n: int) -> zfec.Decoder:
    return zfec.Decoder(k, n)
