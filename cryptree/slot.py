"""Signed mutable slots: the unit of mutable state (directories, sharing dirs).

A slot is addressed by its writer's Ed25519 public key. Its content is a
sequence number and an opaque (already encrypted) payload, signed by the
writer key. Storage peers verify the signature and refuse a sequence number
that is not higher than the one they hold, so a replayed old version is
refused; readers verify the signature again before trusting anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from cryptree.errors import CryptreeError

_DOMAIN = b"pluto/slot/v1\x00"
MAX_SLOT_PAYLOAD = 4 * 1024 * 1024
MAX_SEQ = 2**63 - 1


class SlotError(CryptreeError):
    """A slot that is malformed or whose signature does not verify."""


def _signed_bytes(writer: bytes, seq: int, payload: bytes) -> bytes:
    return _DOMAIN + writer + seq.to_bytes(8, "big") + payload


@dataclass(frozen=True)
class SignedSlot:
    """One version of a mutable slot, as stored by peers."""

    writer: bytes  # 32-byte Ed25519 public key: the slot's address
    seq: int
    payload: bytes
    signature: bytes

    def verify(self) -> None:
        """Raise SlotError unless the fields are well-formed and the signature holds."""
        if not isinstance(self.writer, bytes) or len(self.writer) != 32:
            raise SlotError("slot writer key must be 32 bytes")
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or not 0 <= self.seq <= MAX_SEQ:
            raise SlotError("slot sequence number out of range")
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_SLOT_PAYLOAD:
            raise SlotError(f"slot payload must be bytes of at most {MAX_SLOT_PAYLOAD} bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise SlotError("slot signature must be 64 bytes")
        try:
            VerifyKey(self.writer).verify(_signed_bytes(self.writer, self.seq, self.payload), self.signature)
        except (BadSignatureError, ValueError) as exc:
            raise SlotError("slot signature does not verify") from exc


def sign_slot(key: SigningKey, seq: int, payload: bytes) -> SignedSlot:
    """Sign `payload` as version `seq` of the slot addressed by `key`'s public key."""
    writer = bytes(key.verify_key)
    sig = key.sign(_signed_bytes(writer, seq, payload)).signature
    slot = SignedSlot(writer, seq, payload, sig)
    slot.verify()
    return slot
