"""docs/FORMATS.md stays true for cryptree's formats: its examples decode, say what the doc says, and re-encode.

Every example is made by the real encoders from the fixed keys below and a
fixed nonce source (tests/formats_doc.py), so it is deterministic:
`test_the_doc_holds_exactly_the_examples_the_code_makes` compares the doc's
bytes with what the code makes today. The other tests take the documented
bytes and check them against the documented *layout* with independent code
(AES-GCM from `cryptography`, BLAKE3, Ed25519 from PyNaCl), then open them
with cryptree's real decoders.

Regenerate the blocks after a deliberate format change (and bump its version):

    .venv/bin/python -m tests.cryptree.test_formats_doc
"""

from __future__ import annotations

import base64
from typing import Any

import blake3
import cbor2
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.public import SealedBox
from nacl.signing import VerifyKey

import cryptree.follow
import cryptree.keys
from cryptree.caps import ReadCap, WriteCap, parse_cap
from cryptree.chunks import open_chunk, seal_chunk
from cryptree.dirnode import (
    DirAttrs,
    DirEntry,
    DirLink,
    Symlink,
    Tombstone,
    child_write_cap,
    decode_directory,
    encode_directory,
    link_child,
    open_directory,
    seal_directory,
)
from cryptree.filenode import (
    ChunkRef,
    FileNode,
    FileRef,
    InlineData,
    Manifest,
    decode_manifest,
    encode_manifest,
    open_file_slot,
    open_manifest,
    seal_file_slot,
    seal_manifest,
)
from cryptree.follow import Contact, open_card, open_follow_request, seal_follow_request, sign_card
from cryptree.identity import UserKeys
from cryptree.merkle import merkle_root
from cryptree.packrecord import Locator, PackRecord, open_pack_record, pack_write_cap, seal_pack_record
from cryptree.padding import unpad
from cryptree.slot import SignedSlot
from cryptree.social_backup import open_social_backup, seal_social_backup
from tests.formats_doc import (
    annotate_cbor,
    annotate_fields,
    annotate_include,
    annotate_repeat,
    block,
    fixed_nonces,
    hex_examples,
    nonce_bytes,
    text_examples,
)

# ---- the fixed inputs every example is made from -------------------------------------------------

SEED = bytes(range(32))  # user "alice"
SEED_B = bytes(range(32, 64))  # user "bob"
DIR = WriteCap("dir", b"\x11" * 32, b"\x22" * 32)
CHILD = WriteCap("dir", b"\x33" * 32, b"\x44" * 32)
FILE = WriteCap("file", b"\x66" * 32, b"\x77" * 32)
FILE_KEY = b"\x55" * 32
TAG_A = bytes.fromhex("7f3a2b1c00000001")
TAG_B = bytes.fromhex("a0b1c2d300000002")
T = 1_764_772_800_000_000_000  # 2025-12-03 14:40:00 UTC, in ns
NOW = T // 10**9
CHUNK_PLAINTEXT = b"hello, pluto\n"
PEERS = (b"\xa1" * 32, b"\xa2" * 32, b"\xa3" * 32)
LAYOUT: dict[str, Any] = {
    "v": 1, "pack_id": b"\xbb" * 32, "length": 5000, "k": 2, "n": 3, "segment_size": 4096,
    "segments": [[4096, [b"\xc0" * 32, b"\xc1" * 32, b"\xc2" * 32]], [904, [b"\xd0" * 32, b"\xd1" * 32, b"\xd2" * 32]]],
}  # fmt: skip
FRAGMENT = bytes(range(256)) * 160  # 40960 bytes: two full Merkle leaves and a half one

ALICE = UserKeys.from_seed(SEED)
BOB = UserKeys.from_seed(SEED_B)


def _aad(domain: bytes, writer: bytes, seq: int) -> bytes:
    return domain + b"\x01" + writer + seq.to_bytes(8, "big")


def _cap_bytes(text: str) -> bytes:
    encoded = text.split(":")[2].upper()
    return base64.b32decode(encoded + "=" * (-len(encoded) % 8))


def _frame_fields(body_name: str, body: bytes, total: int) -> str:
    return "\n".join([
        annotate_fields([(len(body).to_bytes(4, "big"), "body length")]),
        annotate_include(body_name, "body"),
        annotate_repeat(0, total - 4 - len(body), "zero padding to the bucket"),
    ])


def _dir_entries() -> tuple[list[DirEntry], DirAttrs, list[Tombstone], Any, Locator, Manifest]:
    with fixed_nonces(cryptree.keys, label=b"chunk"):
        sealed = seal_chunk(ALICE.chunk_mac_key, CHUNK_PLAINTEXT)
    nonce = nonce_bytes(16, b"pack")
    locator = Locator(nonce, pack_write_cap(ALICE.pack_key, nonce).read_cap(), 0, len(sealed.sealed))
    manifest = Manifest.of([ChunkRef.from_sealed(sealed, locator.encode())])
    with fixed_nonces(cryptree.keys, label=b"manifest"):
        ref = FileRef.seal(FILE_KEY, manifest)
    with fixed_nonces(cryptree.keys, label=b"wrap"):
        link = link_child(DIR, CHILD)
    common = {"uid": 1000, "gid": 1000, "atime_ns": T, "mtime_ns": T, "ctime_ns": T}
    entries = [
        DirEntry("a.txt", InlineData(b"hi\n"), 0o644, size=3, xattrs={"user.k": b"v"}, version=((TAG_A, 1),),
                 **common),
        DirEntry("big.bin", ref, 0o600, size=len(CHUNK_PLAINTEXT), version=((TAG_A, 2), (TAG_B, 1)), **common),
        DirEntry("docs", link, 0o755, version=((TAG_B, 1),), **common),
        DirEntry("link", Symlink(b"a.txt"), 0o777, size=5, version=((TAG_A, 1),), **common),
    ]
    attrs = DirAttrs(0o755, 1000, 1000, T, T, T)
    tombstones = [Tombstone("old.txt", T, ((TAG_A, 3),))]
    return entries, attrs, tombstones, sealed, locator, manifest


def build() -> dict[str, tuple[str, bytes | str, str]]:
    """Every cryptree example: name -> (block kind, value, annotated body as the doc shows it)."""
    out: dict[str, tuple[str, bytes | str, str]] = {}

    def hexb(name: str, data: bytes, shown: str | None = None) -> None:
        out[name] = ("hex", data, shown if shown is not None else annotate_fields([(data, "")]))

    def cbor(name: str, data: bytes, names: dict[str, str] | None = None) -> None:
        hexb(name, data, annotate_cbor(data, names))

    # capabilities
    for access, cap in (("w", DIR), ("r", DIR.read_cap())):
        text = cap.to_string()
        out[f"cap-{access}"] = ("text", text, text)
        raw = _cap_bytes(text)
        hexb(f"cap-{access}-bytes", raw, annotate_fields([
            (raw[:1], "version 1"), (raw[1:2], "kind 1: dir"),
            (raw[2:34], "writer seed" if access == "w" else "writer public key"),
            (raw[34:66], "read key"), (raw[66:], "checksum"),
        ]))

    # chunk
    entries, attrs, tombstones, sealed, locator, manifest = _dir_entries()
    hexb("chunk-plaintext", CHUNK_PLAINTEXT)
    hexb("chunk-id", sealed.chunk_id)
    hexb("chunk-key", sealed.chunk_key)
    hexb("chunk-aad", b"pluto/v1/chunk" + sealed.sealed[:1] + sealed.chunk_id, annotate_fields([
        (b"pluto/v1/chunk", '"pluto/v1/chunk"'), (sealed.sealed[:1], "header"), (sealed.chunk_id, "chunk id")]))
    hexb("chunk-head", sealed.sealed[:13], annotate_fields([
        (sealed.sealed[:1], "header 0x10: format 1, no flags (not compressed)"), (sealed.sealed[1:13], "nonce")]))
    frame = len(CHUNK_PLAINTEXT).to_bytes(4, "big") + CHUNK_PLAINTEXT
    frame += bytes(len(sealed.sealed) - 29 - len(frame))
    hexb("chunk-frame", frame, _frame_fields("chunk-plaintext", CHUNK_PLAINTEXT, len(frame)))
    hexb("chunk-sealed-hash", sealed.sealed_hash)

    # locator and manifest
    cbor("locator", locator.encode(), {"0": "locator format", "1": "pack nonce", "2": "pack record writer key",
                                      "3": "pack record read key", "4": "offset", "5": "length"})
    cbor("manifest-body", encode_manifest(manifest), {
        "0": "manifest format", "1": "file size", "2": "indirect", "3": "chunks",
        "3.0.0": "chunk id", "3.0.1": "length", "3.0.2": "chunk key", "3.0.3": "sealed hash", "3.0.4": "locator"})
    with fixed_nonces(cryptree.keys, label=b"manifest"):
        sealed_manifest = seal_manifest(FILE_KEY, manifest)
    hexb("manifest-sealed", sealed_manifest, annotate_fields([
        (sealed_manifest[:1], "manifest format 1"), (sealed_manifest[1:13], "nonce"),
        (sealed_manifest[13:], "AES-256-GCM(file key, @manifest-body, aad) with its 16-byte tag")]))

    # directory
    body = encode_directory(entries, attrs, tombstones)
    entry_names = {"0": "name", "1": "kind", "2": "mode", "3": "uid", "4": "gid", "5": "atime_ns", "6": "mtime_ns",
                   "7": "ctime_ns", "8": "size", "9": "xattrs", "10": "child", "11": "version"}
    names = {"0": "directory format", "1": "self attributes", "2": "entries", "3": "tombstones"}
    for i in range(len(entries)):
        names |= {f"2.{i}.{k}": v for k, v in entry_names.items()}
    names |= {"3.0.0": "name", "3.0.1": "deleted_ns", "3.0.2": "version"}
    cbor("dir-body", body, names)
    v1 = cbor2.dumps([1, None, [["a.txt", 0, 0o644, 0, 0, 0, 0, 0, 3, {}, [0, b"hi\n"]]]], canonical=True)
    cbor("dir-body-v1", v1, {"0": "directory format", "1": "self attributes", "2": "entries"})
    with fixed_nonces(cryptree.keys, label=b"dir"):
        slot = seal_directory(DIR, 3, entries, attrs, tombstones)
    aad = _aad(b"pluto/v1/dir", slot.writer, 3)
    hexb("dir-aad", aad, annotate_fields([(b"pluto/v1/dir", '"pluto/v1/dir"'), (b"\x01", "slot format"),
                                          (slot.writer, "writer public key"), (aad[-8:], "seq 3")]))
    total = len(slot.payload) - 29
    hexb("dir-frame", len(body).to_bytes(4, "big") + body + bytes(total - 4 - len(body)),
         _frame_fields("dir-body", body, total))
    hexb("dir-payload-head", slot.payload[:13], annotate_fields([(slot.payload[:1], "slot format 1"),
                                                                 (slot.payload[1:13], "nonce")]))
    hexb("dir-payload-hash", blake3.blake3(slot.payload).digest())
    signed = b"pluto/slot/v1\x00" + slot.writer + (3).to_bytes(8, "big")
    hexb("slot-signed-prefix", signed, annotate_fields([
        (signed[:14], '"pluto/slot/v1" NUL'), (slot.writer, "writer public key"), (signed[-8:], "seq 3")]))
    hexb("dir-signature", slot.signature)

    # single-file slot, social backup
    node_body = cbor2.dumps([1, 3, [0, b"hi\n"]], canonical=True)
    cbor("file-node-body", node_body, {"0": "file node format", "1": "size", "2": "content"})
    aad = _aad(b"pluto/v1/file-slot", FILE.writer, 1)
    hexb("file-slot-aad", aad, annotate_fields([(b"pluto/v1/file-slot", '"pluto/v1/file-slot"'),
                                                (b"\x01", "slot format"), (FILE.writer, "writer public key"),
                                                (aad[-8:], "seq 1")]))
    aad = _aad(b"pluto/v1/social-backup\x00", ALICE.social.writer, 1)
    hexb("social-aad", aad, annotate_fields([(b"pluto/v1/social-backup\x00", '"pluto/v1/social-backup" NUL'),
                                             (b"\x01", "slot format"), (ALICE.social.writer, "writer public key"),
                                             (aad[-8:], "seq 1")]))

    # pack records
    for version, peers in ((1, PEERS), (2, (PEERS[0], None, PEERS[2]))):
        record_body = cbor2.dumps([version, LAYOUT, list(peers)], canonical=True)
        cbor(f"pack-record-v{version}-body", record_body, {"0": "pack record format", "1": "layout", "2": "peers"})
    cap = pack_write_cap(ALICE.pack_key, locator.nonce)
    aad = _aad(b"pluto/pack-record/v1", cap.writer, 1)
    hexb("pack-record-aad", aad, annotate_fields([(b"pluto/pack-record/v1", '"pluto/pack-record/v1"'),
                                                  (b"\x01", "slot format"), (cap.writer, "writer public key"),
                                                  (aad[-8:], "seq 1")]))

    # contact card, mailbox message
    card = sign_card(ALICE, "alice")
    body_len = len(card) - 64
    hexb("contact-card", card, annotate_cbor(card[:body_len], {
        "0": "card format", "1": "user id (Ed25519)", "2": "box key (X25519)", "3": "username"})
        + "\n" + annotate_fields([(card[body_len:], "Ed25519 signature")]))
    plaintext = _mailbox_plaintext()
    content_len = int.from_bytes(plaintext[64:68], "big")
    content = plaintext[68 : 68 + content_len]
    cbor("mailbox-request-content", content, {
        "0": "message format", "1": "type (1: follow request)", "2": "sender's contact card",
        "3": "recipient user id", "4": "recipient box key", "5": "timestamp (unix s)", "6": "request id",
        "7": "reply capability"})
    hexb("mailbox-request-plaintext", plaintext, "\n".join([
        annotate_fields([(plaintext[:64], "Ed25519 signature of the frame")]),
        _frame_fields("mailbox-request-content", content, 912)]))

    # Merkle
    hexb("fragment-id", merkle_root(FRAGMENT))
    return out


def _mailbox_plaintext() -> bytes:
    with fixed_nonces(cryptree.follow, label=b"request"):
        blob = seal_follow_request(BOB, "bob", Contact.of(ALICE, "alice"), CHILD.read_cap(), now=NOW)
    return bytes(SealedBox(ALICE.box).decrypt(blob))


def render() -> str:
    """The blocks as the doc holds them, to paste after a deliberate format change."""
    return "\n\n".join(block(kind, name, shown) for name, (kind, _, shown) in build().items())


# ---- the doc against the code ---------------------------------------------------------------------

DOC_HEX = hex_examples()
DOC_TEXT = text_examples()


def test_the_doc_holds_exactly_the_examples_the_code_makes() -> None:
    for name, (kind, value, _) in build().items():
        if kind == "hex":
            assert DOC_HEX.get(name) == value, f"docs/FORMATS.md example {name!r} differs from what the code makes"
        else:
            assert DOC_TEXT.get(name) == value, f"docs/FORMATS.md example {name!r} differs from what the code makes"


def test_capability_strings_decode_to_the_documented_bytes_and_checksum() -> None:
    for access, cls in (("w", WriteCap), ("r", ReadCap)):
        text, raw = DOC_TEXT[f"cap-{access}"], DOC_HEX[f"cap-{access}-bytes"]
        assert text.startswith(f"pluto:{access}:") and len(text) == 8 + 112
        assert _cap_bytes(text) == raw and len(raw) == 70
        assert raw[:2] == b"\x01\x01"
        assert raw[66:] == blake3.blake3(b"pluto/v1/cap-checksum" + access.encode() + raw[:66]).digest(length=4)
        cap = parse_cap(text)
        assert type(cap) is cls and cap.kind == "dir" and cap.read_key == raw[34:66]
        assert (cap.writer_seed if isinstance(cap, WriteCap) else cap.writer) == raw[2:34]
        assert cap.to_string() == text
        assert parse_cap(text.upper().replace("PLUTO:", "pluto:")) == cap  # case is ignored


def test_a_sealed_chunk_is_header_nonce_and_the_gcm_of_its_frame() -> None:
    plaintext, frame, head = DOC_HEX["chunk-plaintext"], DOC_HEX["chunk-frame"], DOC_HEX["chunk-head"]
    cid, key = DOC_HEX["chunk-id"], DOC_HEX["chunk-key"]
    assert cid == blake3.blake3(plaintext, key=ALICE.chunk_mac_key).digest()
    assert DOC_HEX["chunk-aad"] == b"pluto/v1/chunk" + head[:1] + cid
    assert head[0] == 0x10 and frame[:4] == len(plaintext).to_bytes(4, "big")
    assert frame[4 : 4 + len(plaintext)] == plaintext and not any(frame[4 + len(plaintext) :])
    sealed = head + AESGCM(key).encrypt(head[1:13], frame, DOC_HEX["chunk-aad"])
    assert len(sealed) == 4096  # the smallest bucket
    assert blake3.blake3(sealed).digest() == DOC_HEX["chunk-sealed-hash"]
    assert open_chunk(key, sealed, cid, ALICE.chunk_mac_key, expected_length=len(plaintext),
                      sealed_hash=DOC_HEX["chunk-sealed-hash"]) == plaintext


def test_the_locator_decodes_to_its_documented_fields_and_back() -> None:
    raw = DOC_HEX["locator"]
    loc = Locator.decode(raw)
    assert loc.nonce == nonce_bytes(16, b"pack") and (loc.offset, loc.length) == (0, 4096)
    assert loc.record == pack_write_cap(ALICE.pack_key, loc.nonce).read_cap()
    assert cbor2.loads(raw) == [1, loc.nonce, loc.record.writer, loc.record.read_key, 0, 4096]
    assert loc.encode() == raw


def test_the_manifest_decodes_seals_and_opens_as_documented() -> None:
    body, sealed = DOC_HEX["manifest-body"], DOC_HEX["manifest-sealed"]
    manifest = decode_manifest(body)
    assert (manifest.size, manifest.indirect, len(manifest.chunks)) == (len(CHUNK_PLAINTEXT), False, 1)
    ref = manifest.chunks[0]
    assert (ref.chunk_id, ref.chunk_key, ref.sealed_hash, ref.locator) == (
        DOC_HEX["chunk-id"], DOC_HEX["chunk-key"], DOC_HEX["chunk-sealed-hash"], DOC_HEX["locator"])
    assert encode_manifest(manifest) == body
    assert sealed[0] == 1
    assert AESGCM(FILE_KEY).decrypt(sealed[1:13], sealed[13:], b"pluto/v1/manifest\x01") == body
    assert open_manifest(FILE_KEY, sealed, expected_size=len(CHUNK_PLAINTEXT)) == manifest


def test_the_directory_body_decodes_to_its_documented_entries_and_back() -> None:
    body = DOC_HEX["dir-body"]
    d = decode_directory(3, body)
    assert [e.name for e in d.entries] == ["a.txt", "big.bin", "docs", "link"]
    assert [e.kind for e in d.entries] == ["file", "file", "dir", "symlink"]
    a, big, docs, link = d.entries
    assert (a.mode, a.uid, a.gid, a.mtime_ns, a.size, dict(a.xattrs)) == (0o644, 1000, 1000, T, 3, {"user.k": b"v"})
    assert a.child == InlineData(b"hi\n") and a.version == ((TAG_A, 1),)
    assert type(big.child) is FileRef and big.child.file_key == FILE_KEY
    assert big.child.sealed_manifest == DOC_HEX["manifest-sealed"] and big.version == ((TAG_A, 2), (TAG_B, 1))
    assert type(docs.child) is DirLink and docs.child.cap == CHILD.read_cap()
    assert child_write_cap(DIR, docs) == CHILD  # the wrapped writer seed opens with the parent's write cap
    assert link.child == Symlink(b"a.txt") and link.size == 5
    assert d.tombstones == (Tombstone("old.txt", T, ((TAG_A, 3),)),)
    assert d.attrs == DirAttrs(0o755, 1000, 1000, T, T, T)
    assert encode_directory(d.entries, d.attrs, d.tombstones) == body


def test_format_1_directories_still_read_with_empty_versions() -> None:
    body = DOC_HEX["dir-body-v1"]
    d = decode_directory(1, body)
    assert d.attrs is None and d.tombstones == ()
    (entry,) = d.entries
    assert (entry.name, entry.child, entry.size, entry.version) == ("a.txt", InlineData(b"hi\n"), 3, ())
    assert cbor2.dumps(cbor2.loads(body), canonical=True) == body


def test_the_directory_slot_is_the_gcm_of_the_padded_body_signed_as_documented() -> None:
    head, frame, aad = DOC_HEX["dir-payload-head"], DOC_HEX["dir-frame"], DOC_HEX["dir-aad"]
    assert aad == _aad(b"pluto/v1/dir", DIR.writer, 3)
    payload = head + AESGCM(DIR.read_key).encrypt(head[1:13], frame, aad)
    assert len(payload) % 4096 == 0 and blake3.blake3(payload).digest() == DOC_HEX["dir-payload-hash"]
    prefix, signature = DOC_HEX["slot-signed-prefix"], DOC_HEX["dir-signature"]
    assert prefix == b"pluto/slot/v1\x00" + DIR.writer + (3).to_bytes(8, "big")
    VerifyKey(DIR.writer).verify(prefix + payload, signature)
    d = open_directory(DIR.read_cap(), SignedSlot(DIR.writer, 3, payload, signature))
    assert encode_directory(d.entries, d.attrs, d.tombstones) == DOC_HEX["dir-body"]
    assert bytes(unpad(frame, "frame")) == DOC_HEX["dir-body"]


def test_a_file_slot_and_the_social_backup_are_sealed_under_their_documented_aad() -> None:
    with fixed_nonces(cryptree.keys, label=b"file"):
        slot = seal_file_slot(FILE, 1, FileNode(3, InlineData(b"hi\n")))
    framed = AESGCM(FILE.read_key).decrypt(slot.payload[1:13], slot.payload[13:], DOC_HEX["file-slot-aad"])
    assert bytes(unpad(framed, "file node")) == DOC_HEX["file-node-body"]
    assert open_file_slot(FILE.read_cap(), slot) == FileNode(3, InlineData(b"hi\n"))
    slot = seal_social_backup(ALICE, 1, b"opaque state")
    framed = AESGCM(ALICE.social.read_key).decrypt(slot.payload[1:13], slot.payload[13:], DOC_HEX["social-aad"])
    assert bytes(unpad(framed, "social backup")) == b"opaque state" == open_social_backup(ALICE, slot)


@pytest.mark.parametrize("version", [1, 2])
def test_pack_record_bodies_decode_to_their_documented_peers(version: int) -> None:
    body = DOC_HEX[f"pack-record-v{version}-body"]
    peers = PEERS if version == 1 else (PEERS[0], None, PEERS[2])
    assert cbor2.loads(body) == [version, LAYOUT, list(peers)]
    nonce = nonce_bytes(16, b"pack")
    cap = pack_write_cap(ALICE.pack_key, nonce)
    with fixed_nonces(cryptree.keys, label=b"record"):
        slot = seal_pack_record(cap, 1, PackRecord(LAYOUT, peers))
    framed = AESGCM(cap.read_key).decrypt(slot.payload[1:13], slot.payload[13:], DOC_HEX["pack-record-aad"])
    assert bytes(unpad(framed, "pack record")) == body
    assert open_pack_record(cap.read_cap(), slot) == (1, PackRecord(LAYOUT, peers))


def test_the_contact_card_opens_to_its_documented_fields_and_signs_the_same() -> None:
    card = DOC_HEX["contact-card"]
    contact = open_card(card)
    assert (contact.user_id, contact.box_public, contact.username) == (ALICE.user_id, ALICE.box_public, "alice")
    body = card[:-64]
    VerifyKey(ALICE.user_id).verify(b"pluto/v1/contact-card\x00" + body, card[-64:])
    assert sign_card(ALICE, "alice") == card


def test_a_follow_request_unseals_to_the_documented_signed_frame() -> None:
    plaintext, content = DOC_HEX["mailbox-request-plaintext"], DOC_HEX["mailbox-request-content"]
    assert len(plaintext) == 976 and plaintext[68 : 68 + len(content)] == content
    VerifyKey(BOB.user_id).verify(b"pluto/v1/mailbox-message\x00" + plaintext[64:], plaintext[:64])
    fields = cbor2.loads(content)
    assert fields[:2] == [1, 1] and fields[2] == sign_card(BOB, "bob")
    assert fields[3:6] == [ALICE.user_id, ALICE.box_public, NOW] and fields[6] == nonce_bytes(16, b"request")
    assert fields[7] == [0, 1, CHILD.writer, CHILD.read_key]
    assert _mailbox_plaintext() == plaintext
    blob = SealedBox(ALICE.box.public_key).encrypt(plaintext)
    assert len(blob) == 1024
    request = open_follow_request(ALICE, blob, now=NOW)
    assert request.sender.username == "bob" and request.reply_cap == CHILD.read_cap()


def test_a_fragment_id_is_the_documented_merkle_construction() -> None:
    def h(*parts: bytes) -> bytes:
        return blake3.blake3(b"".join(parts)).digest()

    leaves = [h(b"\x00", FRAGMENT[i : i + 16384]) for i in range(0, len(FRAGMENT), 16384)]
    assert len(leaves) == 3
    top = h(b"\x01", h(b"\x01", leaves[0], leaves[1]), leaves[2])  # the odd last leaf is promoted
    root = h(b"\x02", len(FRAGMENT).to_bytes(8, "big"), top)
    assert root == DOC_HEX["fragment-id"] == merkle_root(FRAGMENT)


if __name__ == "__main__":
    print(render())
