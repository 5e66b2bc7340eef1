"""Pack records and chunk locators: where a sealed chunk lives, as cryptree data.

A pack (a batch of sealed chunks, erasure-coded into fragments) is described
by a small *pack record*: its layout (k, n, segment sizes, fragment ids) and
which peer holds each fragment column. The record is a signed mutable slot of
its own, so repair can move fragments and re-sign the record without touching
any file manifest that points into the pack.

Record body (CBOR, sealed and signed; byte layout in docs/FORMATS.md §8.4):

    v1: [1, layout, [peer id (bstr 32) × n]]
    v2: [2, layout, [peer id (bstr 32) or null × n]]

A null marks a fragment column that no peer acknowledged (the upload
stopped at `happy`, or every candidate failed): the column is not stored
anywhere and must be placed. v2 also forbids naming one peer for two
columns. Writers use v1 when every column has a peer, so readers that only
know v1 keep reading complete packs; v1 records that name one peer twice
(written by older clients) still open.

A chunk's locator names the pack record (its slot key and read key) and the
chunk's byte range in the pack. Readers of a shared file get exactly that:
they can read the record, not rewrite it. The owner re-derives the record's
write key from a per-user pack key and the pack's random nonce, which the
locator also carries; nobody else can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptree import _cbor
from cryptree._slotbox import open_from_slot, seal_into_slot
from cryptree.caps import ReadCap, WriteCap
from cryptree.errors import FormatError
from cryptree.keys import derive_subkey
from cryptree.slot import SignedSlot

LOCATOR_VERSION = 1
NONCE_SIZE = 16
_RECORD_DOMAIN = b"pluto/pack-record/v1"
_RECORD_V1 = 1  # every column names a peer
_RECORD_V2 = 2  # a column may be null (no peer acknowledged it); peers distinct
_WRITER_LABEL = b"pluto/v1/pack-writer/"
_READ_LABEL = b"pluto/v1/pack-read"
MAX_PEERS_PER_PACK = 256


def pack_write_cap(pack_key: bytes, nonce: bytes) -> WriteCap:
    """The write capability of a pack record (owner only: needs the user's pack key)."""
    _cbor.expect_bytes(nonce, "pack nonce", size=NONCE_SIZE)
    seed = derive_subkey(pack_key, _WRITER_LABEL + nonce)
    return WriteCap("file", seed, derive_subkey(seed, _READ_LABEL))


@dataclass(frozen=True)
class Locator:
    """Where one sealed chunk is: pack record (slot key + read key + nonce) and byte range."""

    nonce: bytes
    record: ReadCap
    offset: int
    length: int

    def encode(self) -> bytes:
        """The bytes stored in a ChunkRef's locator field."""
        return _cbor.dumps(
            [LOCATOR_VERSION, self.nonce, self.record.writer, self.record.read_key, self.offset, self.length]
        )

    @classmethod
    def decode(cls, data: bytes) -> Locator:
        """Parse a locator; FormatError if it is not one."""
        fields = _cbor.expect_list(_cbor.loads(data, "chunk locator"), 6, "chunk locator")
        version, nonce, writer, read_key, offset, length = fields
        if type(version) is not int or version != LOCATOR_VERSION:
            raise FormatError(f"chunk locator format {version!r} is not known to this pluto; upgrade pluto")
        _cbor.expect_bytes(nonce, "pack nonce", size=NONCE_SIZE)
        record = ReadCap("file", _cbor.expect_bytes(writer, "pack record key", size=32),
                         _cbor.expect_bytes(read_key, "pack read key", size=32))
        return cls(nonce, record, _cbor.expect_int(offset, 0, 2**40, "chunk offset"),
                   _cbor.expect_int(length, 1, 2**32, "chunk length"))


@dataclass(frozen=True)
class PackRecord:
    """A pack's layout (as PackLayout.to_dict()) and the peer holding each fragment column.

    `peers[i]` holds fragment i of every segment, or is None when no peer
    acknowledged column i: that column is stored nowhere yet.
    """

    layout: dict[str, Any]
    peers: tuple[bytes | None, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.layout, dict):
            raise FormatError("pack record layout must be a map")
        if type(self.peers) is not tuple or not 1 <= len(self.peers) <= MAX_PEERS_PER_PACK:
            raise FormatError("pack record must name 1 to 256 peers")
        for peer in self.peers:
            if peer is not None:
                _cbor.expect_bytes(peer, "pack record peer id", size=32)

    @property
    def missing(self) -> list[int]:
        """Columns no peer acknowledged."""
        return [i for i, peer in enumerate(self.peers) if peer is None]


def _check_distinct(peers: tuple[bytes | None, ...]) -> None:
    named = [p for p in peers if p is not None]
    if len(set(named)) != len(named):
        raise FormatError("a pack record names one peer for two fragment columns; it is corrupt")


def seal_pack_record(cap: WriteCap, seq: int, record: PackRecord) -> SignedSlot:
    """Seal and sign version `seq` of a pack record (v1 if every column has a peer, else v2).

    Refuses (FormatError) a record that names one peer for two columns: one
    machine's loss must never cost a pack two fragments.
    """
    _check_distinct(record.peers)
    version = _RECORD_V2 if None in record.peers else _RECORD_V1
    body = _cbor.dumps([version, record.layout, list(record.peers)])
    return seal_into_slot(cap, seq, body, _RECORD_DOMAIN, "file", "pack record")


def open_pack_record(cap: ReadCap | WriteCap, slot: SignedSlot) -> tuple[int, PackRecord]:
    """Verify and decrypt a pack record slot: (seq, record)."""
    body = open_from_slot(cap, slot, _RECORD_DOMAIN, "file", "pack record")
    version, layout, peers = _cbor.expect_list(_cbor.loads(body, "pack record"), 3, "pack record")
    if type(version) is not int or version not in (_RECORD_V1, _RECORD_V2):
        raise FormatError(f"pack record format {version!r} is not known to this pluto; upgrade pluto")
    if not isinstance(peers, list):
        raise FormatError("pack record peers must be a list")
    if version == _RECORD_V1 and None in peers:
        raise FormatError("a version 1 pack record cannot leave a column without a peer; it is corrupt")
    record = PackRecord(layout, tuple(peers))
    if version == _RECORD_V2:
        _check_distinct(record.peers)
    return slot.seq, record
