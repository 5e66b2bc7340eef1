"""Encrypt-then-sign of a node's content into a mutable slot, and the reverse.

Shared by directories and single-file nodes. Payload layout:

    version (1) || nonce (12) || AES-256-GCM(read key, pad(body), aad) with tag (16)

with aad = domain || version || writer public key || seq (8, big-endian).
Binding the writer and seq means a ciphertext copied into another slot, or
replayed under another sequence number, does not decrypt; the domain keeps a
file node from being read as a directory and vice versa.
"""

from __future__ import annotations

from cryptree.caps import ReadCap, WriteCap
from cryptree.errors import CapabilityError, FormatError, SignatureError
from cryptree.keys import AEAD_OVERHEAD, aead_open, aead_seal
from cryptree.padding import pad, unpad
from cryptree.slot import MAX_SEQ, MAX_SLOT_PAYLOAD, SignedSlot, SlotError, sign_slot

SLOT_FORMAT = 1
_HEADER = bytes((SLOT_FORMAT,))
_OVERHEAD = len(_HEADER) + AEAD_OVERHEAD


def _aad(domain: bytes, writer: bytes, seq: int) -> bytes:
    return domain + _HEADER + writer + seq.to_bytes(8, "big")


def seal_into_slot(cap: WriteCap, seq: int, body: bytes, domain: bytes, kind: str, what: str) -> SignedSlot:
    """Pad, encrypt under the cap's read key and sign as version `seq` of the cap's slot."""
    if not isinstance(cap, WriteCap):
        raise CapabilityError(f"sealing a {what} needs its write capability, not a {type(cap).__name__}")
    if cap.kind != kind:
        raise CapabilityError(f"this is a {cap.kind} capability; sealing a {what} needs a {kind} capability")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise FormatError(f"slot sequence number must be an integer in [0, {MAX_SEQ}], not {seq!r}")
    framed = pad(body, _OVERHEAD)
    if len(framed) + _OVERHEAD > MAX_SLOT_PAYLOAD:
        raise FormatError(
            f"{what} needs {len(body)} bytes, over the {MAX_SLOT_PAYLOAD}-byte slot limit; split it"
        )
    payload = _HEADER + aead_seal(cap.read_key, framed, _aad(domain, cap.writer, seq))
    return sign_slot(cap.signing_key, seq, payload)


def open_from_slot(cap: ReadCap | WriteCap, slot: SignedSlot, domain: bytes, kind: str, what: str) -> memoryview:
    """Verify `slot` is a well-signed version of the cap's own slot, then decrypt and unpad its body."""
    if not isinstance(cap, (ReadCap, WriteCap)):
        raise CapabilityError(f"opening a {what} needs its read or write capability, not a {type(cap).__name__}")
    if cap.kind != kind:
        raise CapabilityError(f"this is a {cap.kind} capability; opening a {what} needs a {kind} capability")
    if not isinstance(slot, SignedSlot):
        raise FormatError(f"{what} must be a SignedSlot, not a {type(slot).__name__}")
    try:
        slot.verify()
    except SlotError as exc:
        raise SignatureError(f"{what} slot is invalid ({exc}); fetch it from another peer") from None
    if slot.writer != cap.read_cap().writer:
        # A validly signed slot of some *other* node: a peer answering with the
        # wrong object, or a capability for a different node.
        raise SignatureError(f"{what} slot belongs to a different writer than the capability; it is another node")
    payload = slot.payload
    if len(payload) < _OVERHEAD:
        raise FormatError(f"{what} slot payload is truncated ({len(payload)} bytes); it is corrupt")
    if payload[0] != SLOT_FORMAT:
        raise FormatError(f"{what} uses slot format {payload[0]}, which this pluto does not know; upgrade pluto")
    framed = aead_open(cap.read_key, memoryview(payload)[1:], _aad(domain, slot.writer, slot.seq), what)
    return unpad(framed, what)

