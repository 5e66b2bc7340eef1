"""File manifests, inline data, indirect manifests and single-file slots."""

from __future__ import annotations

import dataclasses
import random

import pytest

from cryptree.caps import WriteCap, new_write_cap
from cryptree.chunks import iter_chunks, seal_chunk
from cryptree.dirnode import DirEntry, new_directory_cap, open_directory, seal_directory
from cryptree.errors import CapabilityError, DecryptionError, FormatError, SignatureError
from cryptree.filenode import (
    INLINE_MAX,
    MAX_INLINE_MANIFEST,
    ChunkRef,
    FileNode,
    FileRef,
    InlineData,
    Manifest,
    decode_manifest,
    encode_manifest,
    new_file_key,
    open_chunk_ref,
    open_file_slot,
    open_manifest,
    seal_file_slot,
    seal_manifest,
)
from cryptree.keys import new_key

MAC = new_key()


def ref(i: int = 0, length: int = 10, locator: bytes = b"pack:1") -> ChunkRef:
    return ChunkRef(bytes([i]) * 32, length, bytes([i + 1]) * 32, bytes([i + 2]) * 32, locator)


def store(data: bytes) -> tuple[Manifest, dict[bytes, bytes]]:
    """What the volume engine does: chunk, seal, place (here: a dict), reference."""
    packs, refs = {}, []
    for _, view in iter_chunks(data):
        sc = seal_chunk(MAC, view)
        locator = b"p" + len(packs).to_bytes(4, "big")
        packs[locator] = sc.sealed
        refs.append(ChunkRef.from_sealed(sc, locator))
    return Manifest.of(refs), packs


def test_file_round_trip_through_chunks_and_manifest() -> None:
    data = random.Random(3).randbytes(5 * 1024 * 1024 + 17)
    manifest, packs = store(data)
    assert manifest.size == len(data) and len(manifest.chunks) >= 2
    key = new_file_key()
    opened = open_manifest(key, seal_manifest(key, manifest), expected_size=len(data))
    assert opened == manifest
    out = b"".join(open_chunk_ref(r, packs[r.locator]) for r in opened.chunks)
    assert out == data
    # The owner can also check the keyed ids.
    assert b"".join(open_chunk_ref(r, packs[r.locator], MAC) for r in opened.chunks) == data


def test_chunk_ref_catches_swapped_chunks() -> None:
    manifest, packs = store(random.Random(4).randbytes(3 * 1024 * 1024))
    a, b = manifest.chunks[0], manifest.chunks[1]
    with pytest.raises(DecryptionError):
        open_chunk_ref(a, packs[b.locator])


def test_manifest_wrong_key_or_tamper_or_size() -> None:
    key = new_file_key()
    sealed = seal_manifest(key, Manifest.of([ref(1), ref(2)]))
    with pytest.raises(DecryptionError):
        open_manifest(new_file_key(), sealed)
    with pytest.raises(DecryptionError):
        open_manifest(key, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(FormatError):
        open_manifest(key, b"\x02" + sealed[1:])
    with pytest.raises(FormatError):
        open_manifest(key, sealed[:10])
    with pytest.raises(FormatError, match="entry says"):
        open_manifest(key, sealed, expected_size=21)


def test_manifest_validation() -> None:
    with pytest.raises(FormatError):
        Manifest(11, (ref(1),))  # size disagrees with chunks
    with pytest.raises(FormatError):
        Manifest(10, [ref(1)])  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        ChunkRef(b"x" * 31, 10, b"k" * 32, b"h" * 32)
    with pytest.raises(FormatError):
        ChunkRef(b"x" * 32, 0, b"k" * 32, b"h" * 32)
    with pytest.raises(FormatError):
        ChunkRef(b"x" * 32, 10, b"k" * 32, b"h" * 32, b"l" * 257)
    assert Manifest.of([]).size == 0
    assert ref(1).with_locator(b"elsewhere").locator == b"elsewhere"


def test_indirect_manifest() -> None:
    # A huge file: its manifest is stored as data, and the entry holds the small indirect one.
    inner = Manifest.of([ref(i % 200, 1 << 20) for i in range(5000)])
    blob = encode_manifest(inner)
    outer_refs, packs = [], {}
    for _, view in iter_chunks(blob):
        sc = seal_chunk(MAC, view)
        packs[sc.chunk_id] = sc.sealed
        outer_refs.append(ChunkRef.from_sealed(sc, sc.chunk_id))
    outer = Manifest(inner.size, tuple(outer_refs), indirect=True)
    file_ref = FileRef.seal(new_file_key(), outer)
    opened = file_ref.open(expected_size=inner.size)
    assert opened.indirect and opened.size == 5000 << 20
    again = decode_manifest(b"".join(open_chunk_ref(r, packs[r.locator]) for r in opened.chunks))
    assert again == inner and not again.indirect


def test_large_manifest_must_go_indirect() -> None:
    big = Manifest.of([ref(i % 200) for i in range(MAX_INLINE_MANIFEST // 100)])
    with pytest.raises(FormatError, match="indirect"):
        FileRef.seal(new_file_key(), big)


def test_inline_and_fileref_in_directory() -> None:
    cap = new_directory_cap()
    key = new_file_key()
    manifest = Manifest.of([ref(1, 100), ref(2, 50)])
    entries = [
        DirEntry("tiny", InlineData(b"x" * INLINE_MAX), size=INLINE_MAX),
        DirEntry("big", FileRef.seal(key, manifest), size=150),
    ]
    d = open_directory(cap.read_cap(), seal_directory(cap, 1, entries))
    big = d.get("big")
    assert big.child.file_key == key and big.child.open(expected_size=big.size) == manifest
    assert d.get("tiny").child.data == b"x" * INLINE_MAX
    with pytest.raises(FormatError):
        InlineData(b"x" * (INLINE_MAX + 1))


def test_file_slot_round_trip_and_rejection() -> None:
    cap = new_write_cap("file")
    node = FileNode(150, FileRef.seal(new_file_key(), Manifest.of([ref(1, 100), ref(2, 50)])))
    slot = seal_file_slot(cap, 5, node)
    assert open_file_slot(cap.read_cap(), slot) == node
    with pytest.raises(CapabilityError):
        open_file_slot(new_directory_cap(), slot)
    with pytest.raises(SignatureError):
        open_file_slot(new_write_cap("file"), slot)
    with pytest.raises(SignatureError):
        open_file_slot(cap, dataclasses.replace(slot, seq=6))
    with pytest.raises(CapabilityError):
        seal_file_slot(new_directory_cap(), 1, node)
    with pytest.raises(FormatError):
        FileNode(3, InlineData(b"ab"))
    # A directory slot is not a file node, even under the same keys.
    dir_cap = new_directory_cap()
    with pytest.raises(DecryptionError):
        open_file_slot(WriteCap("file", dir_cap.writer_seed, dir_cap.read_key), seal_directory(dir_cap, 1, []))
