"""Sharing without showing the graph: contact cards, sealed follow requests and grants.

Three objects, all pure bytes (no I/O, no clock: `now` is always passed in):

- **Contact card** (`sign_card` / `open_card`): a user's Ed25519 identity
  key, X25519 box key and username, signed by the identity key. The
  coordinator stores it but cannot swap the box key (it would have to forge
  the signature).
- **Follow request** (`seal_follow_request` / `open_follow_request`): B asks to
  follow A. B's card, a timestamp, a random request id and an optional reply
  capability, signed by B's identity key, then sealed to A's box key with a
  libsodium sealed box (fresh one-time key pair per message).
- **Grant** (`seal_grant` / `open_grant`): A answers ("accept": the read cap
  of the per-follower sharing directory A made for B) or later sends a
  capability directly ("share", "replace"). Same construction, sealed to B.

Requests and grants share one wire format: exactly `MAILBOX_BLOB_SIZE`
(1024) bytes, no header in the clear, so the coordinator cannot tell a request
from an answer, nor one sender from another. Layout (docs/SHARING.md, Formats):

    blob      = SealedBox(recipient box key, plaintext)         1024 bytes
              = one-time X25519 public key (32) || XSalsa20-Poly1305(plaintext) (976 + 16)
    plaintext = signature (64) || frame (912)
    frame     = length (4, big-endian) || content || zeros
    signature = Ed25519(sender identity, "pluto/v1/mailbox-message\\0" || frame)
    content   = canonical CBOR, see _encode_request / _encode_grant

The signed content names the recipient (identity and box key), so a recipient
cannot re-seal a message it received to a third party and pass it off as
addressed to them (the "surreptitious forwarding" flaw of naive
sign-then-encrypt).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import blake3
from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.public import PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from cryptree import _cbor
from cryptree.caps import Kind, ReadCap, WriteCap
from cryptree.errors import CapabilityError, CryptreeError, DecryptionError, FormatError, SignatureError
from cryptree.identity import UserKeys
from cryptree.keys import KEY_SIZE
from cryptree.padding import LEN_PREFIX, unpad

# ---- sizes and limits (part of the format) ---------------------------------------------------

MAILBOX_BLOB_SIZE = 1024  # transport.coordinator.service.CoordinatorLimits.mailbox_blob_size
SEAL_OVERHEAD = bindings.crypto_box_SEALBYTES  # 32-byte one-time public key + 16-byte MAC
SIGNATURE_SIZE = 64
_PLAINTEXT_SIZE = MAILBOX_BLOB_SIZE - SEAL_OVERHEAD  # 976
_FRAME_SIZE = _PLAINTEXT_SIZE - SIGNATURE_SIZE  # 912
MAX_CONTENT_SIZE = _FRAME_SIZE - LEN_PREFIX  # 908

MAX_CARD_SIZE = 300
ID_SIZE = 16  # random request / grant ids: 128 bits, collisions are not a concern
MAX_TIMESTAMP = 2**63 - 1

REQUEST_MAX_AGE = 7 * 86400
GRANT_MAX_AGE = 30 * 86400  # an answer may wait in a mailbox while its recipient is away
MAX_CLOCK_SKEW = 600  # same tolerance as the coordinator's username claims

# Same rule as transport.coordinator.service.USERNAME_RE (cryptree may not import transport;
# a test checks the two agree). It also makes every username a safe file name.
USERNAME_RE = re.compile(r"[a-z0-9_-]{1,32}")

CARD_VERSION = 1
MESSAGE_VERSION = 1
_CARD_DOMAIN = b"pluto/v1/contact-card\x00"
_BINDING_DOMAIN = b"pluto/v1/contact-box-key\x00"
_MESSAGE_DOMAIN = b"pluto/v1/mailbox-message\x00"
_FINGERPRINT_DOMAIN = b"pluto/v1/contact-fingerprint\x00"

_TYPE_REQUEST = 1
_TYPE_GRANT = 2

GrantKind = Literal["accept", "share", "replace"]
_GRANT_CODE: dict[GrantKind, int] = {"accept": 1, "share": 2, "replace": 3}
_CODE_GRANT: dict[int, GrantKind] = {v: k for k, v in _GRANT_CODE.items()}
_CAP_KIND_CODE: dict[Kind, int] = {"dir": 1, "file": 2}  # same codes as the cap strings
_CODE_CAP_KIND: dict[int, Kind] = {v: k for k, v in _CAP_KIND_CODE.items()}

Buffer = bytes | bytearray | memoryview


class ReplayError(CryptreeError):
    """A message that is authentic but stale, dated in the future, or already seen."""


# ---- contacts ------------------------------------------------------------------------------------


def validate_username(name: object) -> str:
    """`name` if it is 1-32 characters of a-z, 0-9, '_' and '-' (the coordinator's rule), else FormatError."""
    if type(name) is not str or USERNAME_RE.fullmatch(name) is None:
        raise FormatError("a username must be 1-32 characters of a-z, 0-9, '_' and '-'")
    return name


def _is_ed25519_point(key: bytes) -> bool:
    # Canonical encoding, on the prime-order subgroup, not of small order.
    return bool(bindings.crypto_core_ed25519_is_valid_point(key))


def _is_x25519_key(key: bytes) -> bool:
    # A low-order X25519 key makes every shared secret zero; libsodium then
    # refuses to seal, so such a key could never receive anything. Any fixed
    # scalar exposes it (its product with a low-order point is zero).
    try:
        bindings.crypto_scalarmult(b"\x09" * 32, key)
    except CryptoError:
        return False
    return True


@dataclass(frozen=True)
class Contact:
    """A user's public card: identity (Ed25519 verify key), box key (X25519) and claimed username."""

    user_id: bytes
    box_public: bytes
    username: str

    def __post_init__(self) -> None:
        if type(self.user_id) is not bytes or len(self.user_id) != KEY_SIZE or not _is_ed25519_point(self.user_id):
            raise FormatError(f"a contact's user id must be a valid {KEY_SIZE}-byte Ed25519 public key")
        box = self.box_public
        if type(box) is not bytes or len(box) != KEY_SIZE or not _is_x25519_key(box):
            raise FormatError(f"a contact's box key must be a valid {KEY_SIZE}-byte X25519 public key")
        validate_username(self.username)

    @classmethod
    def of(cls, keys: UserKeys, username: str) -> Contact:
        """The contact of the user holding `keys` (no signature: see `sign_card` for the signed form)."""
        _check_keys(keys, "keys")
        return cls(keys.user_id, keys.box_public, username)

    def __repr__(self) -> str:
        return f"Contact({self.username!r}, user_id={self.user_id.hex()[:16]}…)"


def _check_keys(keys: object, what: str) -> UserKeys:
    if not isinstance(keys, UserKeys):
        raise CryptreeError(f"{what} must be the UserKeys of a user")
    return keys


def _check_contact(contact: object, what: str) -> Contact:
    if not isinstance(contact, Contact):
        raise CryptreeError(f"{what} must be a Contact (open the user's card with open_card)")
    return contact


def _verify(user_id: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(user_id).verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def contact_binding(keys: UserKeys) -> bytes:
    """The 64-byte signature by `keys`' identity key over its own box key.

    Signed message: ``"pluto/v1/contact-box-key\\0" || user_id || box_public``.
    It carries no username, so it never changes for a given seed and can be
    published next to a bare identity key (the coordinator's username
    directory) to prove which box key belongs to it.
    """
    _check_keys(keys, "keys")
    return keys.identity.sign(_BINDING_DOMAIN + keys.user_id + keys.box_public).signature


def verify_contact(user_id: bytes, box_public: bytes, binding: bytes) -> None:
    """Check a `contact_binding` signature; raise SignatureError unless `user_id` signed `box_public`."""
    if type(user_id) is not bytes or len(user_id) != KEY_SIZE:
        raise FormatError(f"a user id must be {KEY_SIZE} bytes")
    if type(box_public) is not bytes or len(box_public) != KEY_SIZE:
        raise FormatError(f"a box key must be {KEY_SIZE} bytes")
    if type(binding) is not bytes or len(binding) != SIGNATURE_SIZE:
        raise FormatError(f"a contact binding must be a {SIGNATURE_SIZE}-byte signature")
    if not _verify(user_id, _BINDING_DOMAIN + user_id + box_public, binding):
        raise SignatureError("the box key is not signed by this identity; do not send it anything")


def sign_card(keys: UserKeys, username: str) -> bytes:
    """The signed contact card of the user holding `keys`: at most `MAX_CARD_SIZE` bytes (today 168 at most).

    Layout: ``body || signature``, body = canonical CBOR
    ``[1, user_id, box_public, username]``, signature = Ed25519 by the
    identity key over ``"pluto/v1/contact-card\\0" || body``.
    """
    contact = Contact.of(keys, username)
    body = _cbor.dumps([CARD_VERSION, contact.user_id, contact.box_public, contact.username])
    card = body + keys.identity.sign(_CARD_DOMAIN + body).signature
    assert len(card) <= MAX_CARD_SIZE
    return card


def open_card(blob: Buffer) -> Contact:
    """Verify a card made by `sign_card` and return its Contact.

    Raises FormatError for a malformed card and SignatureError when the
    identity inside did not sign it (a substituted box key or username).
    The username is the owner's *claim*: check it against the coordinator's
    username directory before showing it as that person.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise FormatError("a contact card must be bytes")
    blob = bytes(blob)
    if not SIGNATURE_SIZE < len(blob) <= MAX_CARD_SIZE:
        raise FormatError(f"a contact card is at most {MAX_CARD_SIZE} bytes, not {len(blob)}; it is corrupt")
    body, signature = blob[:-SIGNATURE_SIZE], blob[-SIGNATURE_SIZE:]
    fields = _cbor.expect_list(_cbor.loads(body, "contact card"), 4, "contact card")
    if fields[0] != CARD_VERSION or type(fields[0]) is not int:
        raise FormatError("contact card has an unknown version; upgrade pluto")
    user_id = _cbor.expect_bytes(fields[1], "contact card user id", KEY_SIZE)
    box_public = _cbor.expect_bytes(fields[2], "contact card box key", KEY_SIZE)
    username = _cbor.expect_str(fields[3], "contact card username")
    contact = Contact(user_id, box_public, username)
    if _cbor.dumps(fields) != body:
        # One card, one encoding: a re-encoded card would verify the same
        # but hash differently wherever it is stored.
        raise FormatError("contact card is not canonically encoded; it is corrupt")
    if not _verify(user_id, _CARD_DOMAIN + body, signature):
        raise SignatureError("contact card is not signed by the identity it names; do not trust it")
    return contact


def fingerprint(contact: Contact) -> str:
    """A short code two people can compare out of band (80 bits: ``xxxx-xxxx-xxxx-xxxx``).

    It covers the identity and the box key, so matching codes mean the
    coordinator substituted neither.
    """
    _check_contact(contact, "contact")
    digest = blake3.blake3(_FINGERPRINT_DOMAIN + contact.user_id + contact.box_public).digest(length=10)
    text = base64.b32encode(digest).decode("ascii").lower()
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


def share_label(owner: Contact, others: Iterable[Contact] = ()) -> str:
    """The folder name under ``shared/`` for what `owner` shares: their username.

    Usernames on cards are claims, and two contacts may claim the same one.
    If another contact in `others` (a different identity) uses the same
    username, the label becomes ``username~xxxx-xxxx`` (the start of the
    fingerprint), so one person's shares can never appear under another's
    name. The result is always a valid directory entry name.
    """
    _check_contact(owner, "owner")
    for other in others:
        _check_contact(other, "each of others")
        if other.username == owner.username and other.user_id != owner.user_id:
            return f"{owner.username}~{fingerprint(owner)[:9]}"
    return owner.username


# ---- capabilities inside messages ---------------------------------------------------------------


def _encode_cap(cap: ReadCap | WriteCap) -> list[Any]:
    # [access (0 read, 1 write), kind, key material (writer public key | writer seed), read key]
    if isinstance(cap, WriteCap):
        return [1, _CAP_KIND_CODE[cap.kind], cap.writer_seed, cap.read_key]
    if isinstance(cap, ReadCap):
        return [0, _CAP_KIND_CODE[cap.kind], cap.writer, cap.read_key]
    raise CapabilityError("a capability must be a ReadCap or a WriteCap")


def _decode_cap(value: Any, what: str) -> ReadCap | WriteCap:
    fields = _cbor.expect_list(value, 4, what)
    access = _cbor.expect_int(fields[0], 0, 1, f"{what} access")
    kind = _CODE_CAP_KIND[_cbor.expect_int(fields[1], 1, 2, f"{what} kind")]
    key_material = _cbor.expect_bytes(fields[2], f"{what} key", KEY_SIZE)
    read_key = _cbor.expect_bytes(fields[3], f"{what} read key", KEY_SIZE)
    if access == 1:
        return WriteCap(kind, key_material, read_key)
    return ReadCap(kind, key_material, read_key)


# ---- the sealed, signed, fixed-size envelope ------------------------------------------------------


def _check_time(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise CryptreeError(f"{what} must be unix seconds as an int in [0, 2**63-1]")
    return value


def _seal_envelope(signer: SigningKey, recipient_box_public: bytes, content: bytes) -> bytes:
    """Frame `content` to the fixed size, sign the frame, seal it to the box key (1024 bytes out)."""
    if len(content) > MAX_CONTENT_SIZE:
        raise FormatError(f"mailbox message content is {len(content)} bytes; at most {MAX_CONTENT_SIZE} fit")
    frame = len(content).to_bytes(LEN_PREFIX, "big") + content + bytes(MAX_CONTENT_SIZE - len(content))
    signature = signer.sign(_MESSAGE_DOMAIN + frame).signature
    try:
        blob = SealedBox(PublicKey(recipient_box_public)).encrypt(signature + frame)
    except (CryptoError, ValueError, TypeError):
        raise FormatError("the recipient's box key is not a usable X25519 key; fetch their card again") from None
    assert len(blob) == MAILBOX_BLOB_SIZE
    return blob


@dataclass(frozen=True)
class _Envelope:
    type: int
    sender: Contact
    timestamp: int
    message_id: bytes
    rest: list[Any]


def _open_envelope(recipient: UserKeys, blob: Buffer, now: int, what: str) -> _Envelope:
    """Unseal, authenticate and check the common header of a mailbox blob (not its age)."""
    _check_keys(recipient, "recipient")
    _check_time(now, "now")
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise FormatError(f"a {what} must be bytes")
    blob = bytes(blob)
    if len(blob) != MAILBOX_BLOB_SIZE:
        raise FormatError(f"a {what} is exactly {MAILBOX_BLOB_SIZE} bytes, not {len(blob)}; it is corrupt")
    try:
        plaintext = SealedBox(recipient.box).decrypt(blob)
    except (CryptoError, ValueError, TypeError):
        raise DecryptionError(
            f"{what} does not open with your box key; it is for someone else or was tampered with"
        ) from None
    if len(plaintext) != _PLAINTEXT_SIZE:  # cannot happen after the size check; belt and braces
        raise FormatError(f"{what} has the wrong plaintext size; it is corrupt")
    signature, frame = plaintext[:SIGNATURE_SIZE], plaintext[SIGNATURE_SIZE:]
    # The sealed box authenticates nothing about the sender (anyone can seal
    # to a public key), so everything below is hostile until the signature holds.
    fields = _cbor.expect_list(_cbor.loads(unpad(frame, what), what), None, what)
    if len(fields) < 7:
        raise FormatError(f"{what} has {len(fields)} fields, too few; it is corrupt")
    if type(fields[0]) is not int or fields[0] != MESSAGE_VERSION:
        raise FormatError(f"{what} has an unknown version; upgrade pluto")
    mtype = _cbor.expect_int(fields[1], _TYPE_REQUEST, _TYPE_GRANT, f"{what} type")
    sender = open_card(_cbor.expect_bytes(fields[2], f"{what} sender card", max_size=MAX_CARD_SIZE))
    if not _verify(sender.user_id, _MESSAGE_DOMAIN + frame, signature):
        raise SignatureError(f"{what} is not signed by the sender it names; it is forged, ignore it")
    to_user = _cbor.expect_bytes(fields[3], f"{what} recipient id", KEY_SIZE)
    to_box = _cbor.expect_bytes(fields[4], f"{what} recipient box key", KEY_SIZE)
    if to_user != recipient.user_id or to_box != recipient.box_public:
        raise SignatureError(f"{what} was signed for another recipient and forwarded to you; ignore it")
    timestamp = _cbor.expect_int(fields[5], 0, MAX_TIMESTAMP, f"{what} timestamp")
    message_id = _cbor.expect_bytes(fields[6], f"{what} id", ID_SIZE)
    return _Envelope(mtype, sender, timestamp, message_id, fields[7:])


def _check_limits(**limits: object) -> None:
    for name, value in limits.items():
        _check_time(value, name)


def _check_age(timestamp: int, now: int, max_age: int, max_skew: int, what: str) -> None:
    if timestamp > now + max_skew:
        raise ReplayError(f"{what} is dated {timestamp - now} s in the future; check the clock, or ignore it")
    if now - timestamp > max_age:
        raise ReplayError(f"{what} is {now - timestamp} s old, older than {max_age} s; ask the sender to send it again")


def _header(sender_card: bytes, recipient: Contact, mtype: int, now: int) -> list[Any]:
    return [MESSAGE_VERSION, mtype, sender_card, recipient.user_id, recipient.box_public, now, os.urandom(ID_SIZE)]


# ---- follow requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FollowRequest:
    """An opened, verified follow request: `sender` asks to follow the recipient."""

    sender: Contact
    request_id: bytes
    timestamp: int
    reply_cap: ReadCap | None = field(default=None, repr=False)

    @property
    def message_id(self) -> bytes:
        """The id to remember against replays (see SeenIds)."""
        return self.request_id


def seal_follow_request(
    sender: UserKeys,
    sender_username: str,
    recipient: Contact,
    reply_cap: ReadCap | None = None,
    *,
    now: int,
) -> bytes:
    """A follow request from `sender` to `recipient`, sealed to the recipient: exactly 1024 bytes.

    Content (signed by the sender's identity key, naming the recipient):
    ``[1, 1, sender card, recipient user id, recipient box key, now, request id (16 random bytes),
    reply cap or null]``. `recipient` is the Contact from the recipient's
    verified card (`open_card`). `reply_cap` is a read cap the sender offers
    back (a directory it made for the recipient); a write cap is refused.
    """
    _check_keys(sender, "sender")
    _check_contact(recipient, "recipient")
    _check_time(now, "now")
    if reply_cap is not None and type(reply_cap) is not ReadCap:
        raise CapabilityError("a follow request offers at most a read capability; never send a write cap to a stranger")
    header = _header(sign_card(sender, sender_username), recipient, _TYPE_REQUEST, now)
    content = [*header, None if reply_cap is None else _encode_cap(reply_cap)]
    return _seal_envelope(sender.identity, recipient.box_public, _cbor.dumps(content))


def _request_from(env: _Envelope, what: str) -> FollowRequest:
    if len(env.rest) != 1:
        raise FormatError(f"{what} must have 8 fields, not {7 + len(env.rest)}; it is corrupt")
    reply_cap: ReadCap | None = None
    if env.rest[0] is not None:
        offered = _decode_cap(env.rest[0], f"{what} reply capability")
        if not isinstance(offered, ReadCap):
            raise FormatError(f"{what} offers a write capability; a follow request carries read caps only")
        reply_cap = offered
    return FollowRequest(env.sender, env.message_id, env.timestamp, reply_cap)


def open_follow_request(
    recipient: UserKeys,
    blob: Buffer,
    now: int,
    max_age: int = REQUEST_MAX_AGE,
    *,
    max_skew: int = MAX_CLOCK_SKEW,
) -> FollowRequest:
    """Open and verify a follow request addressed to `recipient`.

    Raises FormatError (wrong size, malformed, or a grant rather than a
    request), DecryptionError (not sealed to this box key, or tampered),
    SignatureError (card or request not signed by the sender it names, or
    signed for another recipient), ReplayError (older than `max_age` seconds
    or more than `max_skew` seconds in the future). Checking the request id
    against ids already seen is the caller's job (SeenIds).
    """
    _check_limits(max_age=max_age, max_skew=max_skew)
    env = _open_envelope(recipient, blob, now, "follow request")
    if env.type != _TYPE_REQUEST:
        raise FormatError("mailbox blob is a grant, not a follow request; open it with open_mailbox_blob")
    request = _request_from(env, "follow request")
    _check_age(env.timestamp, now, max_age, max_skew, "follow request")
    return request


# ---- grants -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """An opened, verified grant: `sender` gives the recipient `cap`.

    kind "accept": `cap` is the read cap of the sharing directory the sender
    made for the recipient, answering request `request_id`. "replace": that
    directory moved; `cap` replaces the previous one. "share": any capability
    given directly (how a write cap is shared).
    """

    sender: Contact
    kind: GrantKind
    cap: ReadCap | WriteCap = field(repr=False)
    request_id: bytes | None
    grant_id: bytes
    timestamp: int

    @property
    def message_id(self) -> bytes:
        """The id to remember against replays (see SeenIds)."""
        return self.grant_id


def _check_grant_fields(kind: object, cap: object, request_id: object, err: type[CryptreeError], what: str) -> None:
    if kind in ("accept", "replace"):
        if type(cap) is not ReadCap or cap.kind != "dir":
            raise err(f"{what} of kind {kind!r} carries the read capability of a directory")
    elif kind == "share":
        if type(cap) not in (ReadCap, WriteCap):
            raise err(f"{what} carries a ReadCap or a WriteCap")
    else:
        raise err(f"{what} kind must be 'accept', 'share' or 'replace', not {kind!r}")
    if kind == "accept":
        if type(request_id) is not bytes or len(request_id) != ID_SIZE:
            raise err(f"an accepting {what} names the {ID_SIZE}-byte id of the request it answers")
    elif request_id is not None:
        raise err(f"only an accepting {what} names a request id")


def seal_grant(
    sender: UserKeys,
    sender_username: str,
    recipient: Contact,
    cap: ReadCap | WriteCap,
    kind: GrantKind,
    request_id: bytes | None = None,
    *,
    now: int,
) -> bytes:
    """A grant of `cap` from `sender` to `recipient`, sealed to the recipient: exactly 1024 bytes.

    Content (signed by the sender's identity key, naming the recipient):
    ``[1, 2, sender card, recipient user id, recipient box key, now, grant id (16 random bytes),
    kind, cap, request id or null]``, kind 1 accept, 2 share, 3 replace.
    "accept" and "replace" take a directory ReadCap; "accept" needs the id of
    the FollowRequest it answers, the others take none.
    """
    _check_keys(sender, "sender")
    _check_contact(recipient, "recipient")
    _check_time(now, "now")
    _check_grant_fields(kind, cap, request_id, CapabilityError, "grant")
    header = _header(sign_card(sender, sender_username), recipient, _TYPE_GRANT, now)
    content = [*header, _GRANT_CODE[kind], _encode_cap(cap), request_id]
    return _seal_envelope(sender.identity, recipient.box_public, _cbor.dumps(content))


def _grant_from(env: _Envelope, what: str) -> Grant:
    if len(env.rest) != 3:
        raise FormatError(f"{what} must have 10 fields, not {7 + len(env.rest)}; it is corrupt")
    kind = _CODE_GRANT[_cbor.expect_int(env.rest[0], 1, len(_CODE_GRANT), f"{what} kind")]
    cap = _decode_cap(env.rest[1], f"{what} capability")
    request_id = env.rest[2]
    _check_grant_fields(kind, cap, request_id, FormatError, what)
    return Grant(env.sender, kind, cap, request_id, env.message_id, env.timestamp)


def open_grant(
    recipient: UserKeys,
    blob: Buffer,
    expected_sender: Contact | None,
    now: int,
    max_age: int = GRANT_MAX_AGE,
    *,
    max_skew: int = MAX_CLOCK_SKEW,
) -> Grant:
    """Open and verify a grant addressed to `recipient`.

    With `expected_sender`, a grant signed by any other identity raises
    SignatureError. Without it the caller must check `grant.sender` itself
    (only act on grants from people it asked to follow). Other errors as
    `open_follow_request`; the default `max_age` is 30 days.
    """
    if expected_sender is not None:
        _check_contact(expected_sender, "expected_sender")
    _check_limits(max_age=max_age, max_skew=max_skew)
    env = _open_envelope(recipient, blob, now, "grant")
    if env.type != _TYPE_GRANT:
        raise FormatError("mailbox blob is a follow request, not a grant; open it with open_mailbox_blob")
    if expected_sender is not None and env.sender.user_id != expected_sender.user_id:
        raise SignatureError(f"grant is signed by {env.sender.username!r}, not by the expected sender; ignore it")
    grant = _grant_from(env, "grant")
    _check_age(env.timestamp, now, max_age, max_skew, "grant")
    return grant


def open_mailbox_blob(
    recipient: UserKeys,
    blob: Buffer,
    now: int,
    *,
    request_max_age: int = REQUEST_MAX_AGE,
    grant_max_age: int = GRANT_MAX_AGE,
    max_skew: int = MAX_CLOCK_SKEW,
) -> FollowRequest | Grant:
    """Open any blob from one's mailbox: requests and grants look the same on the wire.

    Errors as `open_follow_request` / `open_grant`. A Grant comes back without
    a sender check: act on it only if its sender is someone you follow (or
    asked to follow, for "accept").
    """
    _check_limits(request_max_age=request_max_age, grant_max_age=grant_max_age, max_skew=max_skew)
    env = _open_envelope(recipient, blob, now, "mailbox message")
    if env.type == _TYPE_REQUEST:
        request = _request_from(env, "follow request")
        _check_age(env.timestamp, now, request_max_age, max_skew, "follow request")
        return request
    grant = _grant_from(env, "grant")
    _check_age(env.timestamp, now, grant_max_age, max_skew, "grant")
    return grant


# ---- replay protection --------------------------------------------------------------------------------


class SeenIds:
    """Ids of messages already accepted, kept only as long as their timestamp would still pass.

    A message older than `window` seconds is refused by its timestamp, so its
    id can be forgotten: memory is bounded by what arrives in one window. Pure
    state; persisting `entries()` (and restoring with `SeenIds(window, entries)`)
    is the caller's job. `window` must be at least the largest max_age used.
    """

    def __init__(self, window: int = GRANT_MAX_AGE, entries: Mapping[bytes, int] | None = None) -> None:
        self.window = _check_time(window, "window")
        self._seen: dict[bytes, int] = {}
        for message_id, timestamp in (entries or {}).items():
            if type(message_id) is not bytes or len(message_id) != ID_SIZE:
                raise FormatError(f"a seen message id must be {ID_SIZE} bytes; the saved list is corrupt")
            self._seen[message_id] = _check_time(timestamp, "a seen message's timestamp")

    def check_and_remember(self, message: FollowRequest | Grant, now: int) -> None:
        """Raise ReplayError if `message` was seen before; otherwise remember it.

        Call it after the open_* function accepted the message, and act on
        the message only if this returns.
        """
        if not isinstance(message, (FollowRequest, Grant)):
            raise CryptreeError("SeenIds remembers opened FollowRequest and Grant objects")
        _check_time(now, "now")
        cutoff = now - self.window
        self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
        if message.message_id in self._seen:
            raise ReplayError("this message was already received; it is a replay, ignore it")
        self._seen[message.message_id] = message.timestamp

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def entries(self) -> dict[bytes, int]:
        """A copy of the remembered ids and their timestamps, to persist."""
        return dict(self._seen)
