"""What the coordinator and its clients must agree on byte for byte.

The signed messages (a username claim, a mailbox fetch or delete) and the
size bounds both sides check. The client imports these from here, not from
the server, so the two cannot drift apart.
"""

from __future__ import annotations

import re

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

USERNAME_RE = re.compile(r"[a-z0-9_-]{1,32}")
USERNAME_CONTEXT = b"pluto/username/v1\x00"
MAILBOX_CONTEXT = b"pluto/mailbox/v1\x00"
SIGNATURE_SIZE = 64
NONCE_SIZE = 32
ADDRESS_MAX = 300
CARD_MAX = 300


def is_valid_username(name: object) -> bool:
    """True if `name` is 1-32 characters of a-z, 0-9, '_' and '-'."""
    return isinstance(name, str) and USERNAME_RE.fullmatch(name) is not None


def username_claim_message(username: str, public_key: bytes, timestamp: int) -> bytes:
    """The bytes an Ed25519 key signs to claim `username` at `timestamp` (unix seconds)."""
    return USERNAME_CONTEXT + username.encode("utf-8") + b"\x00" + public_key + timestamp.to_bytes(8, "big")


def mailbox_message(action: str, mailbox: bytes, nonce: bytes) -> bytes:
    """The bytes the mailbox key signs to `fetch` or `delete` with a challenge nonce."""
    if action not in ("fetch", "delete"):
        raise ValueError(f"unknown mailbox action {action!r}")
    return MAILBOX_CONTEXT + action.encode() + b"\x00" + mailbox + nonce


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if `signature` is a valid Ed25519 signature of `message` by `public_key`."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        # libsodium also refuses small-order keys here, so a degenerate key
        # cannot "sign" for everyone.
        return False
    return True
