"""Peer ids: a peer's Noise static public key in a stable text form.

The form follows libp2p's CIDv1 style so a DHT can be added later: a
multibase 'b' prefix (base32, lower case, no padding) over the multicodec
varint for an X25519 public key (0xec) followed by the 32 key bytes.
"""

from __future__ import annotations

import base64

_X25519_PUB_MULTICODEC = b"\xec\x01"  # varint(0xec)
KEY_SIZE = 32


def peer_id_text(public_key: bytes) -> str:
    """Text form of a 32-byte X25519 static public key."""
    if len(public_key) != KEY_SIZE:
        raise ValueError("a peer key is 32 bytes")
    raw = _X25519_PUB_MULTICODEC + public_key
    return "b" + base64.b32encode(raw).decode().rstrip("=").lower()


def parse_peer_id(text: str) -> bytes:
    """The 32-byte key behind a peer id; ValueError with one line if malformed."""
    if not isinstance(text, str) or not text.startswith("b"):
        raise ValueError("a peer id starts with 'b' (base32 multibase)")
    body = text[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ValueError("a peer id is base32 text") from exc
    if len(raw) != len(_X25519_PUB_MULTICODEC) + KEY_SIZE or not raw.startswith(_X25519_PUB_MULTICODEC):
        raise ValueError("peer id is not an X25519 key of 32 bytes")
    return raw[len(_X25519_PUB_MULTICODEC) :]
