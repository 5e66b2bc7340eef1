"""Capabilities: the self-contained strings that grant access to a directory tree or a file.

A node (directory, or a file shared on its own) lives in a signed mutable
slot addressed by an Ed25519 public key (the *writer*). Two secrets guard it:

- the writer seed (Ed25519 signing-key seed): lets you publish new versions;
- the read key (AES-256-GCM): decrypts the slot's content.

    ReadCap  = (kind, writer public key, read key)   -> find, verify, decrypt
    WriteCap = (kind, writer seed,       read key)   -> all of that, and sign

A write cap yields its read cap (the public key is computed from the seed);
a read cap cannot yield the write cap (that would mean inverting Ed25519).

String form: ``pluto:r:<base32>`` / ``pluto:w:<base32>``, lowercase RFC 4648
base32 without padding (case-insensitive, no characters that need quoting in a
shell or URL, double-click selects it whole) of

    version (1) || kind (1) || 32-byte key material || 32-byte read key || checksum (4)

where checksum = BLAKE3("pluto/v1/cap-checksum" || access letter || the rest)[:4],
so a mistyped, truncated, or r<->w edited string is refused, not misread.
The checksum is for typos, not security: the keys themselves are the secret.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Literal

import blake3
from nacl.signing import SigningKey

from cryptree.errors import CapabilityError
from cryptree.keys import KEY_SIZE, new_key

Kind = Literal["dir", "file"]

CAP_VERSION = 1
_KIND_CODE: dict[Kind, int] = {"dir": 1, "file": 2}
_CODE_KIND: dict[int, Kind] = {v: k for k, v in _KIND_CODE.items()}
_CHECKSUM_SIZE = 4
_PAYLOAD_SIZE = 2 + 2 * KEY_SIZE + _CHECKSUM_SIZE
_ENCODED_SIZE = -(-_PAYLOAD_SIZE * 8 // 5)
_CHECKSUM_LABEL = b"pluto/v1/cap-checksum"
_SCHEME = "pluto"


def _check_fields(cls: str, kind: object, key_material: object, read_key: object, what: str) -> None:
    if kind not in _KIND_CODE:
        raise CapabilityError(f"{cls} kind must be 'dir' or 'file', not {kind!r}")
    if not isinstance(key_material, bytes) or len(key_material) != KEY_SIZE:
        raise CapabilityError(f"{cls} {what} must be {KEY_SIZE} bytes")
    if not isinstance(read_key, bytes) or len(read_key) != KEY_SIZE:
        raise CapabilityError(f"{cls} read key must be {KEY_SIZE} bytes")


def _checksum(access: str, body: bytes) -> bytes:
    return blake3.blake3(_CHECKSUM_LABEL + access.encode() + body).digest(length=_CHECKSUM_SIZE)


def _encode(access: str, kind: Kind, key_material: bytes, read_key: bytes) -> str:
    body = bytes((CAP_VERSION, _KIND_CODE[kind])) + key_material + read_key
    text = base64.b32encode(body + _checksum(access, body)).decode("ascii").rstrip("=").lower()
    return f"{_SCHEME}:{access}:{text}"


@dataclass(frozen=True)
class ReadCap:
    """Grants reading one node (and, for a directory, its whole subtree). Immutable, hashable."""

    kind: Kind
    writer: bytes = field(repr=False)  # Ed25519 public key: the slot address
    read_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_fields("read capability", self.kind, self.writer, self.read_key, "writer public key")

    def to_string(self) -> str:
        """The shareable ``pluto:r:…`` form (a secret: whoever has it can read)."""
        return _encode("r", self.kind, self.writer, self.read_key)

    def read_cap(self) -> ReadCap:
        """Itself, so code can take "any cap" and ask for read access."""
        return self

    def __repr__(self) -> str:
        # Never print key material: caps end up in logs and tracebacks.
        return f"ReadCap(kind={self.kind!r}, writer={self.writer.hex()[:16]}…)"


@dataclass(frozen=True)
class WriteCap:
    """Grants reading and publishing new versions of one node (a directory: its subtree too)."""

    kind: Kind
    writer_seed: bytes = field(repr=False)  # Ed25519 signing-key seed
    read_key: bytes = field(repr=False)
    _signing_key: SigningKey = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_fields("write capability", self.kind, self.writer_seed, self.read_key, "writer seed")
        object.__setattr__(self, "_signing_key", SigningKey(self.writer_seed))

    @property
    def signing_key(self) -> SigningKey:
        """The Ed25519 key that signs this node's slot."""
        return self._signing_key

    @property
    def writer(self) -> bytes:
        """The slot address: the 32-byte Ed25519 public key."""
        return bytes(self._signing_key.verify_key)

    def read_cap(self) -> ReadCap:
        """The read capability this write capability implies."""
        return ReadCap(self.kind, self.writer, self.read_key)

    def to_string(self) -> str:
        """The shareable ``pluto:w:…`` form (a secret: whoever has it can write)."""
        return _encode("w", self.kind, self.writer_seed, self.read_key)

    def __repr__(self) -> str:
        return f"WriteCap(kind={self.kind!r}, writer={self.writer.hex()[:16]}…)"


def new_write_cap(kind: Kind) -> WriteCap:
    """Fresh random keys for a new node of `kind` (unlinkable to any other node)."""
    return WriteCap(kind, new_key(), new_key())


def parse_cap(text: str) -> ReadCap | WriteCap:
    """Parse a ``pluto:r:…`` or ``pluto:w:…`` string; raise CapabilityError if it is not exactly one.

    Surrounding whitespace and letter case are ignored (base32 is
    case-insensitive and people paste with a trailing newline); anything
    else wrong (prefix, characters, length, checksum, version, kind) is refused.
    """
    if not isinstance(text, str):
        raise CapabilityError("a capability must be text starting with 'pluto:r:' or 'pluto:w:'")
    text = text.strip()
    if not text.isascii():
        # Unicode case folding maps some letters (e.g. the Kelvin sign) onto
        # ASCII ones; a capability is pure ASCII, so refuse before folding.
        raise CapabilityError("capability contains non-ASCII characters; copy it again")
    if len(text) > 4 * _ENCODED_SIZE:
        raise CapabilityError(f"capability is {len(text)} characters long, far more than one capability; copy just one")
    parts = text.lower().split(":")
    if len(parts) != 3 or parts[0] != _SCHEME or parts[1] not in ("r", "w"):
        raise CapabilityError("capability must start with 'pluto:r:' or 'pluto:w:'; copy the whole string")
    access, encoded = parts[1], parts[2]
    if len(encoded) != _ENCODED_SIZE:
        raise CapabilityError(
            f"capability has {len(encoded)} characters after the prefix; it must have {_ENCODED_SIZE}, copy it again"
        )
    try:
        payload = base64.b32decode(encoded.upper() + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        raise CapabilityError(
            "capability contains characters outside base32 (a-z, 2-7); copy it again"
        ) from None
    if len(payload) != _PAYLOAD_SIZE:
        raise CapabilityError("capability has the wrong length; copy it again")
    body, check = payload[:-_CHECKSUM_SIZE], payload[-_CHECKSUM_SIZE:]
    if _checksum(access, body) != check:
        raise CapabilityError("capability checksum does not match; it was mistyped or altered, copy it again")
    if body[0] != CAP_VERSION:
        raise CapabilityError(f"capability version {body[0]} is not supported by this pluto; upgrade pluto")
    kind = _CODE_KIND.get(body[1])
    if kind is None:
        raise CapabilityError(f"capability names unknown node kind {body[1]}; upgrade pluto")
    key_material, read_key = body[2 : 2 + KEY_SIZE], body[2 + KEY_SIZE :]
    if access == "r":
        return ReadCap(kind, key_material, read_key)
    return WriteCap(kind, key_material, read_key)
