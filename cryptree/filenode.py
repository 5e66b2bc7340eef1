"""File content: inline data for tiny files, or a manifest of chunk references.

A file's manifest lists its chunks in order. It is sealed under the file's
own random key, so a single file can be handed out (file key + where the
sealed manifest is) without the directory's key. Where it lives:

- ``InlineData``: files of at most INLINE_MAX bytes sit in the directory entry
  itself: no chunk, no pack, no extra round trip.
- ``FileRef``: the file key and the sealed manifest, inside the entry. When a
  manifest is too large to sit in an entry (over MAX_INLINE_MANIFEST sealed
  bytes, ~100 chunks), the volume engine stores the encoded manifest as data
  (chunked and sealed like file content) and puts an *indirect* manifest in
  the entry: its chunks, concatenated, are `encode_manifest` of the real one.
  One level only; that covers files of many terabytes.

A file shared on its own (kind "file" capability) is a slot holding a
``FileNode`` (size + content), sealed and signed like a directory.

Encoded manifest (CBOR): [1, size, indirect, [[chunk_id, length, chunk_key,
sealed_hash, locator], ...]]; sealed manifest: 0x01 || AES-256-GCM(file_key,
cbor, aad = "pluto/v1/manifest" || 0x01).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptree import _cbor
from cryptree._slotbox import open_from_slot, seal_into_slot
from cryptree.caps import ReadCap, WriteCap
from cryptree.chunks import ID_SIZE, MAX_CHUNK_SIZE, SealedChunk, open_chunk
from cryptree.errors import FormatError
from cryptree.keys import AEAD_OVERHEAD, KEY_SIZE, aead_open, aead_seal, new_key
from cryptree.slot import SignedSlot

INLINE_MAX = 2048
# Every change to a directory re-uploads its whole slot to several peers, so
# big manifests go out of line early: 16 KiB is ~100 chunks, ~140 MiB of file.
MAX_INLINE_MANIFEST = 16 * 1024
MAX_LOCATOR = 256
MAX_MANIFEST_CHUNKS = 1 << 24
MAX_FILE_SIZE = (1 << 63) - 1
HASH_SIZE = 32

MANIFEST_FORMAT = 1
_MANIFEST_HEADER = bytes((MANIFEST_FORMAT,))
_MANIFEST_AAD = b"pluto/v1/manifest" + _MANIFEST_HEADER
_FILE_SLOT_DOMAIN = b"pluto/v1/file-slot"
_FILE_NODE_VERSION = 1


def new_file_key() -> bytes:
    """A fresh random key for a new file's manifest."""
    return new_key()


@dataclass(frozen=True)
class ChunkRef:
    """Where one chunk is and how to open it. `locator`: an encoded packrecord.Locator (docs/FORMATS.md §7)."""

    chunk_id: bytes = field(repr=False)  # keyed BLAKE3 of the plaintext (owner's dedup key)
    length: int  # plaintext length
    chunk_key: bytes = field(repr=False)
    sealed_hash: bytes = field(repr=False)  # BLAKE3 of the sealed bytes: lets any reader verify them
    locator: bytes = b""  # opaque to cryptree; at most MAX_LOCATOR bytes

    def __post_init__(self) -> None:
        _check_chunk_ref(self.chunk_id, self.length, self.chunk_key, self.sealed_hash, self.locator)

    @classmethod
    def from_sealed(cls, sealed: SealedChunk, locator: bytes = b"") -> ChunkRef:
        """The reference to a chunk just sealed, once the engine knows where it put it."""
        return cls(sealed.chunk_id, sealed.length, sealed.chunk_key, sealed.sealed_hash, locator)

    def with_locator(self, locator: bytes) -> ChunkRef:
        """The same chunk at another place (after repacking or repair)."""
        return ChunkRef(self.chunk_id, self.length, self.chunk_key, self.sealed_hash, locator)


def _check_chunk_ref(cid: Any, length: Any, key: Any, sealed_hash: Any, locator: Any) -> None:
    _cbor.expect_bytes(cid, "chunk id", size=ID_SIZE)
    _cbor.expect_int(length, 1, MAX_CHUNK_SIZE, "chunk length")
    _cbor.expect_bytes(key, "chunk key", size=KEY_SIZE)
    _cbor.expect_bytes(sealed_hash, "sealed chunk hash", size=HASH_SIZE)
    _cbor.expect_bytes(locator, "chunk locator", max_size=MAX_LOCATOR)


def open_chunk_ref(ref: ChunkRef, sealed: bytes | memoryview, mac_key: bytes | None = None) -> bytes:
    """Open a fetched chunk, checking all its reference pins: sealed hash, AEAD, length (id too, given the MAC key)."""
    return open_chunk(
        ref.chunk_key, sealed, ref.chunk_id, mac_key, expected_length=ref.length, sealed_hash=ref.sealed_hash
    )


@dataclass(frozen=True)
class Manifest:
    """A file's chunk list. `indirect`: the chunks hold an encoded Manifest, not file data."""

    size: int  # the file's size (for an indirect manifest too)
    chunks: tuple[ChunkRef, ...]
    indirect: bool = False

    def __post_init__(self) -> None:
        _cbor.expect_int(self.size, 0, MAX_FILE_SIZE, "file size")
        if type(self.chunks) is not tuple or not all(type(c) is ChunkRef for c in self.chunks):
            raise FormatError("manifest chunks must be a tuple of ChunkRef")
        if len(self.chunks) > MAX_MANIFEST_CHUNKS:
            raise FormatError(f"manifest lists {len(self.chunks)} chunks, over the {MAX_MANIFEST_CHUNKS} limit")
        _cbor.expect_bool(self.indirect, "manifest indirect flag")
        if not self.indirect and self.data_size != self.size:
            raise FormatError(f"manifest chunks add up to {self.data_size} bytes, not the file size {self.size}")

    @classmethod
    def of(cls, chunks: list[ChunkRef] | tuple[ChunkRef, ...]) -> Manifest:
        """A direct manifest whose size is the sum of its chunks."""
        chunks = tuple(chunks)
        return cls(sum(c.length for c in chunks), chunks)

    @property
    def data_size(self) -> int:
        """Bytes stored in this manifest's chunks (for an indirect one: the encoded inner manifest)."""
        return sum(c.length for c in self.chunks)


def encode_manifest(manifest: Manifest) -> bytes:
    """Canonical CBOR of a manifest (what an indirect manifest's chunks hold)."""
    rows = [[c.chunk_id, c.length, c.chunk_key, c.sealed_hash, c.locator] for c in manifest.chunks]
    return _cbor.dumps([MANIFEST_FORMAT, manifest.size, manifest.indirect, rows])


def decode_manifest(data: bytes | memoryview) -> Manifest:
    """Parse `encode_manifest` output strictly; raise FormatError on anything malformed."""
    top = _cbor.expect_list(_cbor.loads(data, "manifest"), 4, "manifest")
    version, size, indirect, rows = top
    if version != MANIFEST_FORMAT or type(version) is not int:
        raise FormatError(f"manifest format {version!r} is not known to this pluto; upgrade pluto")
    rows = _cbor.expect_list(rows, None, "manifest chunk list")
    if len(rows) > MAX_MANIFEST_CHUNKS:
        raise FormatError(f"manifest lists {len(rows)} chunks, over the {MAX_MANIFEST_CHUNKS} limit; it is corrupt")
    chunks = []
    for row in rows:
        cid, length, key, sealed_hash, locator = _cbor.expect_list(row, 5, "manifest chunk reference")
        _check_chunk_ref(cid, length, key, sealed_hash, locator)
        chunks.append(ChunkRef(cid, length, key, sealed_hash, locator))
    return Manifest(
        _cbor.expect_int(size, 0, MAX_FILE_SIZE, "file size"),
        tuple(chunks),
        _cbor.expect_bool(indirect, "manifest indirect flag"),
    )


def seal_manifest(file_key: bytes, manifest: Manifest) -> bytes:
    """Encrypt a manifest under its file's key.

    Not padded: a sealed manifest sits inside a padded directory slot, or is
    stored as chunks (which are padded).
    """
    return _MANIFEST_HEADER + aead_seal(file_key, encode_manifest(manifest), _MANIFEST_AAD)


def open_manifest(file_key: bytes, sealed: bytes | memoryview, expected_size: int | None = None) -> Manifest:
    """Decrypt and validate a sealed manifest; optionally check the file size the entry claims."""
    view = memoryview(sealed).cast("B")
    if len(view) < 1 + AEAD_OVERHEAD:
        raise FormatError(f"sealed manifest is truncated ({len(view)} bytes); it is corrupt")
    if view[0] != MANIFEST_FORMAT:
        raise FormatError(f"sealed manifest has format {view[0]}, not known to this pluto; upgrade pluto")
    manifest = decode_manifest(aead_open(file_key, view[1:], _MANIFEST_AAD, "manifest"))
    if expected_size is not None and manifest.size != expected_size:
        raise FormatError(f"manifest describes {manifest.size} bytes but the entry says {expected_size}; it is corrupt")
    return manifest


@dataclass(frozen=True)
class InlineData:
    """A tiny file's bytes, kept in its directory entry."""

    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _cbor.expect_bytes(self.data, "inline file data", max_size=INLINE_MAX)


@dataclass(frozen=True)
class FileRef:
    """A file's key and its sealed manifest, kept in its directory entry."""

    file_key: bytes = field(repr=False)
    sealed_manifest: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _cbor.expect_bytes(self.file_key, "file key", size=KEY_SIZE)
        _cbor.expect_bytes(self.sealed_manifest, "sealed manifest", max_size=MAX_INLINE_MANIFEST)
        if len(self.sealed_manifest) < 1 + AEAD_OVERHEAD:
            raise FormatError("sealed manifest is truncated; it is corrupt")

    @classmethod
    def seal(cls, file_key: bytes, manifest: Manifest) -> FileRef:
        """Seal `manifest` under `file_key`; FormatError if it is too big to sit in an entry (go indirect)."""
        sealed = seal_manifest(file_key, manifest)
        if len(sealed) > MAX_INLINE_MANIFEST:
            raise FormatError(
                f"sealed manifest is {len(sealed)} bytes, over {MAX_INLINE_MANIFEST}; "
                "store it as data and use an indirect manifest"
            )
        return cls(file_key, sealed)

    def open(self, expected_size: int | None = None) -> Manifest:
        """Decrypt and validate this file's manifest."""
        return open_manifest(self.file_key, self.sealed_manifest, expected_size)


FileContent = InlineData | FileRef


def encode_content(content: FileContent) -> list[Any]:
    """CBOR-ready form of file content: [0, data] or [1, file_key, sealed_manifest]."""
    if type(content) is InlineData:
        return [0, content.data]
    if type(content) is FileRef:
        return [1, content.file_key, content.sealed_manifest]
    raise FormatError(f"file content must be InlineData or FileRef, not {type(content).__name__}")


def decode_content(value: Any) -> FileContent:
    """Inverse of `encode_content`, strict."""
    if type(value) is not list or not value:
        raise FormatError("file content must be a non-empty list; it is corrupt")
    if value[0] == 0 and type(value[0]) is int:
        _, data = _cbor.expect_list(value, 2, "inline file content")
        return InlineData(_cbor.expect_bytes(data, "inline file data", max_size=INLINE_MAX))
    if value[0] == 1 and type(value[0]) is int:
        _, key, sealed = _cbor.expect_list(value, 3, "file reference")
        return FileRef(
            _cbor.expect_bytes(key, "file key", size=KEY_SIZE), _cbor.expect_bytes(sealed, "sealed manifest")
        )
    raise FormatError("file content has an unknown type tag; it is corrupt")


@dataclass(frozen=True)
class FileNode:
    """The content of a file shared on its own (a "file" slot)."""

    size: int
    content: FileContent

    def __post_init__(self) -> None:
        _cbor.expect_int(self.size, 0, MAX_FILE_SIZE, "file size")
        if type(self.content) not in (InlineData, FileRef):
            raise FormatError("file node content must be InlineData or FileRef")
        if type(self.content) is InlineData and len(self.content.data) != self.size:
            raise FormatError(f"inline file holds {len(self.content.data)} bytes but its size says {self.size}")


def seal_file_slot(write_cap: WriteCap, seq: int, node: FileNode) -> SignedSlot:
    """Seal a single-file node as version `seq` of the file capability's slot."""
    if type(node) is not FileNode:
        raise FormatError(f"expected a FileNode, not {type(node).__name__}")
    body = _cbor.dumps([_FILE_NODE_VERSION, node.size, encode_content(node.content)])
    return seal_into_slot(write_cap, seq, body, _FILE_SLOT_DOMAIN, "file", "file node")


def open_file_slot(cap: ReadCap | WriteCap, slot: SignedSlot) -> FileNode:
    """Verify, decrypt and validate a single-file slot."""
    body = open_from_slot(cap, slot, _FILE_SLOT_DOMAIN, "file", "file node")
    version, size, content = _cbor.expect_list(_cbor.loads(body, "file node"), 3, "file node")
    if version != _FILE_NODE_VERSION or type(version) is not int:
        raise FormatError(f"file node format {version!r} is not known to this pluto; upgrade pluto")
    return FileNode(_cbor.expect_int(size, 0, MAX_FILE_SIZE, "file size"), decode_content(content))
