"""Size buckets for sealed objects, so exact plaintext sizes do not show.

Scheme: an object of n bytes is stored as the smallest bucket >= n, where
buckets are multiples of a step that grows with size:

    step(n) = max(4 KiB, 2**(floor(log2 n) - 6))

Below 256 KiB that is 4 KiB multiples (what Peergos does); above, the step is
1/64 of the power of two just below n, so the padding overhead is at most
1/64 (~1.6 %) and the size is hidden within that band: a 1 MiB chunk is padded
to a 16 KiB multiple, an 8 MiB chunk to a 128 KiB multiple.

Padding goes *inside* the AEAD (length prefix, payload, zeros), so it is
authenticated and a peer cannot strip it to learn the length.
"""

from __future__ import annotations

from cryptree.errors import FormatError

MIN_STEP = 4096
# log2 of the granularity ratio for large objects (1/64).
_FINE_BITS = 6
LEN_PREFIX = 4


def padded_size(n: int) -> int:
    """The bucket size an object of `n` bytes is padded to (never less than MIN_STEP)."""
    if n <= MIN_STEP:
        return MIN_STEP
    step = max(MIN_STEP, 1 << (n.bit_length() - 1 - _FINE_BITS))
    return -(-n // step) * step


def pad(body: bytes | bytearray | memoryview, overhead: int) -> bytes:
    """Frame `body` as length || body || zeros so that adding `overhead` bytes lands on a bucket.

    `overhead` is what the container adds around this frame (header, nonce,
    tag), so the *stored* object, not just the plaintext, has a bucket size.
    """
    n = len(body)
    if n >= 1 << 32:
        raise FormatError(f"object of {n} bytes is too large to pad; split it into chunks")
    total = padded_size(LEN_PREFIX + n + overhead)
    return b"".join((n.to_bytes(LEN_PREFIX, "big"), body, bytes(total - overhead - LEN_PREFIX - n)))


def unpad(framed: bytes, what: str) -> memoryview:
    """Recover the body framed by `pad`; raise FormatError if the frame is inconsistent."""
    if len(framed) < LEN_PREFIX:
        raise FormatError(f"{what} is too short to hold its length; it is corrupt")
    n = int.from_bytes(framed[:LEN_PREFIX], "big")
    if LEN_PREFIX + n > len(framed):
        raise FormatError(f"{what} claims {n} bytes but holds fewer; it is corrupt")
    # Non-zero padding means the writer is not following the format: refuse it
    # rather than carry a covert channel around.
    start = LEN_PREFIX + n
    if framed.count(0, start) != len(framed) - start:
        raise FormatError(f"{what} has non-zero padding; it is corrupt")
    return memoryview(framed)[LEN_PREFIX : LEN_PREFIX + n]
