"""Content-defined chunking and chunk sealing.

Chunking: FastCDC (pyfastcdc's Cython path), restic-like sizes by default
(min 512 KiB, FastCDC "normal" size 1 MiB, max 8 MiB; the observed mean on
random data is ~1.4 MiB because FastCDC skips the first min_size bytes of each
chunk). Cut points depend only on content, so an edit in the middle of a big
file changes only the chunks around it. Each user's gear table is XORed with
a seed derived from their recovery seed, so chunk boundaries, and hence
sealed sizes, differ between users for the same file (a weak keying, but it
costs nothing and spoils simple size-fingerprint matching).

Ids and keys (Borg's design): chunk_id = BLAKE3 keyed with the user's chunk
MAC key over the plaintext, so identical chunks dedup within one user and a
peer (or another user) cannot test whether someone stores a known file.
chunk_key = HKDF(mac key, "pluto/v1/chunk/key" || chunk_id): deterministic,
so a deduplicated chunk needs no key lookup, and readers of a shared file get
the keys of exactly the chunks they were given, nothing else.

Sealed layout (the whole object lands on a padding bucket, see padding.py):

    header (1: 0x10 | flags; bit 0 = zstd) || nonce (12) || AES-256-GCM(
        chunk_key, length (4) || body || zero padding,
        aad = "pluto/v1/chunk" || header || chunk_id) || tag (16)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import blake3
import zstandard
from pyfastcdc.cy import FastCDC

from cryptree.errors import CryptreeError, DecryptionError, FormatError
from cryptree.keys import AEAD_OVERHEAD, KEY_SIZE, aead_open, aead_seal, derive_subkey
from cryptree.padding import LEN_PREFIX, pad, padded_size, unpad

MIN_SIZE = 512 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024
# The largest chunk open_chunk accepts: pyfastcdc's own ceiling for max_size,
# so a volume chunked with larger settings still reads, and no more.
MAX_CHUNK_SIZE = 16 * 1024 * 1024
ID_SIZE = 32

CHUNK_FORMAT = 0x10
FLAG_ZSTD = 0x01
_FLAGS_KNOWN = FLAG_ZSTD
_OVERHEAD = 1 + AEAD_OVERHEAD
_AAD_LABEL = b"pluto/v1/chunk"
_KEY_LABEL = b"pluto/v1/chunk/key"

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC settings. Changing them changes every cut point, so keep them per volume."""

    min_size: int = MIN_SIZE
    avg_size: int = AVG_SIZE
    max_size: int = MAX_SIZE
    seed: int = 0  # 0 = pyfastcdc's stock gear table; UserKeys.chunker_seed for real volumes

    def __post_init__(self) -> None:
        if not 64 <= self.min_size <= self.avg_size <= self.max_size <= MAX_CHUNK_SIZE:
            raise CryptreeError(
                f"chunk sizes must satisfy 64 <= min <= avg <= max <= {MAX_CHUNK_SIZE}; got "
                f"{self.min_size}/{self.avg_size}/{self.max_size}"
            )
        if type(self.seed) is not int or not 0 <= self.seed < 1 << 63:
            raise CryptreeError("chunker seed must be an integer in [0, 2**63)")

    def fastcdc(self) -> FastCDC:
        """A pyfastcdc chunker with these settings (cheap; make one per iteration)."""
        return FastCDC(
            self.avg_size, min_size=self.min_size, max_size=self.max_size, normalized_chunking=1, seed=self.seed
        )


DEFAULT_PARAMS = ChunkerParams()


def iter_chunks(data: Buffer, params: ChunkerParams = DEFAULT_PARAMS) -> Iterator[tuple[int, memoryview]]:
    """Yield (offset, view) for each content-defined chunk of `data`, without copying.

    Works on anything exposing the buffer protocol, including an mmap the
    caller made of a cached file, so a large file need not be read into
    memory. Empty input yields nothing.
    """
    view = memoryview(data).cast("B")
    if not len(view):
        return
    for chunk in params.fastcdc().cut_buf(view):
        yield chunk.offset, chunk.data


@dataclass
class StreamChunker:
    """Push-based chunking for data that arrives in pieces (network, pipe, FUSE writes).

    Gives exactly the cut points `iter_chunks` gives on the concatenation. A
    cut is final once max_size bytes past the chunk start are buffered,
    because FastCDC never looks further than that. Cutting runs only once
    2 * max_size bytes are buffered, so each pass consumes at least max_size
    bytes and the work stays linear; memory stays under 2 * max_size plus
    the last piece fed.
    """

    params: ChunkerParams = DEFAULT_PARAMS
    _buf: bytearray = field(default_factory=bytearray, repr=False)
    _offset: int = 0  # stream offset of _buf[0]

    def feed(self, data: Buffer) -> list[tuple[int, bytes]]:
        """Add bytes; return the (stream offset, chunk) pairs that became final, in order."""
        self._buf += data
        if len(self._buf) < 2 * self.params.max_size:
            return []
        return self._take(final=False)

    def finish(self) -> list[tuple[int, bytes]]:
        """End of stream: return the remaining (stream offset, chunk) pairs."""
        return self._take(final=True)

    def _take(self, final: bool) -> list[tuple[int, bytes]]:
        cuts = _cut_points(self.params, self._buf, final)
        with memoryview(self._buf) as view:
            out = [(self._offset + off, bytes(view[off : off + length])) for off, length in cuts]
        if cuts:
            consumed = cuts[-1][0] + cuts[-1][1]
            # Only legal once every view of the bytearray is gone (hence the helpers).
            del self._buf[:consumed]
            self._offset += consumed
        return out


def _cut_points(params: ChunkerParams, buf: bytearray, final: bool) -> list[tuple[int, int]]:
    """(offset, length) of the cuts in `buf` that are final; drops every view of `buf` on return."""
    cuts: list[tuple[int, int]] = []
    if not buf:
        return cuts
    with memoryview(buf) as view:
        chunker = params.fastcdc().cut_buf(view)
        for chunk in chunker:
            if not final and len(view) - chunk.offset < params.max_size:
                break
            cuts.append((chunk.offset, chunk.length))
        # The chunker and chunks hold exports of `view`; free them before it is released.
        del chunker
        chunk = None
    return cuts


def chunk_id(mac_key: bytes, plaintext: Buffer) -> bytes:
    """The 32-byte id of a chunk: BLAKE3 keyed with the user's chunk MAC key over the plaintext."""
    if not isinstance(mac_key, bytes) or len(mac_key) != KEY_SIZE:
        raise CryptreeError(f"chunk MAC key must be {KEY_SIZE} bytes; take it from UserKeys.chunk_mac_key")
    return blake3.blake3(plaintext, key=mac_key).digest()


def derive_chunk_key(mac_key: bytes, cid: bytes) -> bytes:
    """The chunk's AEAD key, derived from the MAC key and its id (same chunk, same key: dedup)."""
    return derive_subkey(mac_key, _KEY_LABEL + cid)


def hash_sealed(sealed: Buffer) -> bytes:
    """Plain BLAKE3 of a sealed chunk: lets anyone holding a chunk ref verify the exact bytes."""
    return blake3.blake3(sealed).digest()


@dataclass(frozen=True)
class SealedChunk:
    """A chunk ready to store: what to put in the pack, and what to put in the manifest."""

    chunk_id: bytes = field(repr=False)
    chunk_key: bytes = field(repr=False)
    sealed: bytes = field(repr=False)
    length: int  # plaintext length
    compressed: bool
    sealed_hash: bytes = field(repr=False)


_SAMPLE = 16 * 1024  # bytes per probe
_SAMPLE_FROM = 256 * 1024  # smaller chunks are simply compressed


def _worth_compressing(data: memoryview) -> bool:
    """A cheap guess whether zstd can shrink `data`: compress three small probes at level 1.

    Incompressible data (media, archives, encrypted files) is most of what
    people store, and compressing a whole MiB of it at level 3 only to throw
    the result away cost ~1 ms per MB on every write. Like Borg's "auto"
    mode, a probe that saves less than 3 % is taken to speak for the chunk.
    """
    n = len(data)
    if n < _SAMPLE_FROM:
        return True
    probe = b"".join((data[:_SAMPLE], data[n // 2 : n // 2 + _SAMPLE], data[n - _SAMPLE :]))
    # A compressor per call: zstd contexts are not safe to share between the sealing threads.
    return len(zstandard.ZstdCompressor(level=1).compress(probe)) < 0.97 * len(probe)


def seal_chunk(mac_key: bytes, plaintext: Buffer, compress: bool = True, level: int = 3) -> SealedChunk:
    """Compress (only if it saves stored bytes), pad and encrypt one chunk.

    zstd output is used only when it lands in a smaller padding bucket than
    the raw chunk; otherwise it would cost decompression time for nothing
    (and incompressible data is most of what people store: media, archives).
    """
    data = memoryview(plaintext).cast("B")
    if len(data) > MAX_CHUNK_SIZE:
        raise CryptreeError(f"chunk of {len(data)} bytes exceeds {MAX_CHUNK_SIZE}; chunk the data first")
    cid = chunk_id(mac_key, data)
    key = derive_chunk_key(mac_key, cid)
    body: Buffer = data
    flags = 0
    raw_size = padded_size(LEN_PREFIX + len(data) + _OVERHEAD)
    if compress and raw_size > padded_size(0) and _worth_compressing(data):
        packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
        if padded_size(LEN_PREFIX + len(packed) + _OVERHEAD) < raw_size:
            body, flags = packed, FLAG_ZSTD
    header = bytes((CHUNK_FORMAT | flags,))
    sealed = header + aead_seal(key, pad(body, _OVERHEAD), _AAD_LABEL + header + cid)
    return SealedChunk(cid, key, sealed, len(data), bool(flags), hash_sealed(sealed))


def open_chunk(
    chunk_key: bytes,
    sealed: Buffer,
    expected_id: bytes,
    mac_key: bytes | None = None,
    *,
    expected_length: int | None = None,
    sealed_hash: bytes | None = None,
) -> bytes:
    """Decrypt and verify a sealed chunk; return its plaintext.

    Always checks the AEAD (bound to `expected_id`). With `sealed_hash` it
    first checks the exact sealed bytes; with `mac_key` (the owner's) it
    checks the plaintext's keyed hash equals `expected_id`. Someone reading a
    shared file has no MAC key: the sealed hash from the (signed) manifest is
    what stops a fellow reader who knows the chunk key from forging content.
    """
    view = memoryview(sealed).cast("B")
    if not isinstance(expected_id, bytes) or len(expected_id) != ID_SIZE:
        raise CryptreeError(f"expected chunk id must be {ID_SIZE} bytes")
    if sealed_hash is not None and hash_sealed(view) != sealed_hash:
        raise DecryptionError("sealed chunk does not match its hash; fetch it from another peer")
    if len(view) < _OVERHEAD:
        raise FormatError(f"sealed chunk is truncated ({len(view)} bytes); fetch it from another peer")
    header = view[0]
    if header & 0xF0 != CHUNK_FORMAT or header & 0x0F & ~_FLAGS_KNOWN:
        raise FormatError(f"sealed chunk has unknown format byte {header:#04x}; upgrade pluto")
    framed = aead_open(chunk_key, view[1:], _AAD_LABEL + bytes((header,)) + expected_id, "chunk")
    body = unpad(framed, "chunk")
    plaintext = _decompress(body) if header & FLAG_ZSTD else bytes(body)
    if len(plaintext) > MAX_CHUNK_SIZE:
        raise FormatError(f"chunk holds {len(plaintext)} bytes, over the {MAX_CHUNK_SIZE}-byte limit; it is corrupt")
    if expected_length is not None and len(plaintext) != expected_length:
        raise FormatError(f"chunk holds {len(plaintext)} bytes, not the {expected_length} its reference says")
    if mac_key is not None and chunk_id(mac_key, plaintext) != expected_id:
        raise DecryptionError("chunk content does not match its id; it was forged or mixed up, fetch it again")
    return plaintext


def _decompress(body: memoryview) -> bytes:
    # Check the declared size before decompressing: zstandard trusts the frame
    # header and ignores max_output_size when it holds a content size.
    try:
        size = zstandard.frame_content_size(body)
        if not 0 <= size <= MAX_CHUNK_SIZE:
            raise FormatError("compressed chunk declares no size or too large a size; it is corrupt")
        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_CHUNK_SIZE)
    except zstandard.ZstdError:
        raise FormatError("compressed chunk does not decompress; it is corrupt") from None
    if len(out) != size:
        raise FormatError("compressed chunk decompresses to the wrong size; it is corrupt")
    return out
