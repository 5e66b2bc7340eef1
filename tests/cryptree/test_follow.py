"""Contact cards, sealed follow requests and grants (cryptree.follow).

Round trips, fixed wire size, tampering, wrong recipient, forged and forwarded
signatures, stale and replayed messages, and hostile input (random blobs,
random plaintexts validly sealed, mutated fields validly signed) that must come
out as CryptreeError and nothing else.
"""

from __future__ import annotations

import copy
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import PublicKey, SealedBox

from cryptree import _cbor, follow
from cryptree.caps import ReadCap, WriteCap, new_write_cap
from cryptree.dirnode import DirEntry, link_child, new_directory_cap, validate_name
from cryptree.errors import CapabilityError, CryptreeError, DecryptionError, FormatError, SignatureError
from cryptree.follow import (
    GRANT_MAX_AGE,
    MAILBOX_BLOB_SIZE,
    MAX_CARD_SIZE,
    MAX_CLOCK_SKEW,
    REQUEST_MAX_AGE,
    Contact,
    FollowRequest,
    Grant,
    ReplayError,
    SeenIds,
    contact_binding,
    fingerprint,
    open_card,
    open_follow_request,
    open_grant,
    open_mailbox_blob,
    seal_follow_request,
    seal_grant,
    share_label,
    sign_card,
    validate_username,
    verify_contact,
)
from cryptree.identity import UserKeys

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_750_000_000

ALICE = UserKeys.from_seed(bytes([1]) * 32)
BOB = UserKeys.from_seed(bytes([2]) * 32)
CAROL = UserKeys.from_seed(bytes([3]) * 32)
ALICE_CARD = sign_card(ALICE, "alice")
BOB_CARD = sign_card(BOB, "bob")
A = open_card(ALICE_CARD)
B = open_card(BOB_CARD)
C = open_card(sign_card(CAROL, "carol"))
REPLY = new_directory_cap().read_cap()
SHARING = new_directory_cap()
REQUEST = seal_follow_request(BOB, "bob", A, REPLY, now=NOW)
REQUEST_ID = open_follow_request(ALICE, REQUEST, NOW).request_id
GRANT = seal_grant(ALICE, "alice", B, SHARING.read_cap(), "accept", REQUEST_ID, now=NOW)


def _reseal(plaintext: bytes, to: bytes) -> bytes:
    return SealedBox(PublicKey(to)).encrypt(plaintext)


def _unseal(keys: UserKeys, blob: bytes) -> bytes:
    return SealedBox(keys.box).decrypt(blob)


def _content(keys: UserKeys, blob: bytes) -> list[Any]:
    """The decoded content list of a blob sealed to `keys` (test helper: no checks)."""
    frame = _unseal(keys, blob)[follow.SIGNATURE_SIZE :]
    n = int.from_bytes(frame[:4], "big")
    return cbor2.loads(frame[4 : 4 + n])


def _sign_and_seal(signer: UserKeys, to: Contact, content: Any) -> bytes:
    return follow._seal_envelope(signer.identity, to.box_public, _cbor.dumps(content))


# ---- contacts ----------------------------------------------------------------------------


def test_card_round_trip_and_size() -> None:
    assert A == Contact(ALICE.user_id, ALICE.box_public, "alice") == Contact.of(ALICE, "alice")
    assert len(sign_card(ALICE, "a" * 32)) <= MAX_CARD_SIZE
    assert len(sign_card(ALICE, "a" * 32)) == 168
    assert open_card(bytearray(ALICE_CARD)) == A and open_card(memoryview(ALICE_CARD)) == A
    assert "alice" in repr(A) and ALICE.user_id.hex() not in repr(A)


def test_card_tampering_any_byte_is_refused() -> None:
    for i in range(len(ALICE_CARD)):
        bad = bytearray(ALICE_CARD)
        bad[i] ^= 0x01
        with pytest.raises(CryptreeError):
            open_card(bytes(bad))


def test_card_with_substituted_box_key_is_refused() -> None:
    # The coordinator swaps in its own box key: the signature no longer holds.
    body = _cbor.dumps([1, ALICE.user_id, CAROL.box_public, "alice"])
    with pytest.raises(SignatureError):
        open_card(body + ALICE_CARD[-64:])


def test_card_of_a_signed_by_c_is_refused() -> None:
    body = _cbor.dumps([1, ALICE.user_id, ALICE.box_public, "alice"])
    forged = body + CAROL.identity.sign(follow._CARD_DOMAIN + body).signature
    with pytest.raises(SignatureError):
        open_card(forged)


@pytest.mark.parametrize("name", ["", "A", "a" * 33, "al ice", "../x", "al/ice", "é", "a\n", "a.b", 5, None, b"a"])
def test_bad_usernames_are_refused(name: Any) -> None:
    with pytest.raises(FormatError):
        validate_username(name)
    with pytest.raises(FormatError):
        sign_card(ALICE, name)


def test_username_rule_matches_the_coordinator() -> None:
    from transport.coordinator.service import USERNAME_RE

    assert follow.USERNAME_RE.pattern == USERNAME_RE.pattern


def test_contact_refuses_invalid_keys() -> None:
    with pytest.raises(FormatError):
        Contact(bytes(32), ALICE.box_public, "alice")  # small-order Ed25519 point
    with pytest.raises(FormatError):
        Contact(ALICE.user_id, bytes(32), "alice")  # low-order X25519 point
    with pytest.raises(FormatError):
        Contact(ALICE.user_id[:31], ALICE.box_public, "alice")
    with pytest.raises(FormatError):
        Contact(ALICE.user_id, "x" * 32, "alice")  # type: ignore[arg-type]


def test_contact_binding() -> None:
    binding = contact_binding(ALICE)
    assert len(binding) == 64
    verify_contact(ALICE.user_id, ALICE.box_public, binding)
    with pytest.raises(SignatureError):
        verify_contact(ALICE.user_id, CAROL.box_public, binding)
    with pytest.raises(SignatureError):
        verify_contact(CAROL.user_id, ALICE.box_public, binding)
    with pytest.raises(SignatureError):
        verify_contact(ALICE.user_id, ALICE.box_public, contact_binding(CAROL))
    with pytest.raises(FormatError):
        verify_contact(ALICE.user_id, ALICE.box_public, binding[:63])
    with pytest.raises(SignatureError):  # a card signature is not a binding (domain separation)
        verify_contact(ALICE.user_id, ALICE.box_public, ALICE_CARD[-64:])


def test_fingerprint_and_share_label() -> None:
    fp = fingerprint(A)
    assert len(fp) == 19 and fp.count("-") == 3 and fp == fingerprint(open_card(sign_card(ALICE, "other")))
    assert fp != fingerprint(B)
    assert share_label(A) == "alice" == share_label(A, [A, B, C])
    impostor = open_card(sign_card(CAROL, "alice"))
    label = share_label(A, [impostor])
    assert label.startswith("alice~") and label != share_label(impostor, [A])
    for name in (label, share_label(impostor, [A]), share_label(B)):
        assert validate_name(name) == name


# ---- follow requests ----------------------------------------------------------------------


def test_request_round_trip() -> None:
    req = open_follow_request(ALICE, REQUEST, NOW)
    assert isinstance(req, FollowRequest)
    assert req.sender == B and req.timestamp == NOW and req.reply_cap == REPLY
    assert len(req.request_id) == 16 and req.message_id == req.request_id
    bare = open_follow_request(ALICE, seal_follow_request(BOB, "bob", A, now=NOW), NOW)
    assert bare.reply_cap is None and bare.request_id != req.request_id


def test_request_refuses_write_cap_as_reply() -> None:
    with pytest.raises(CapabilityError):
        seal_follow_request(BOB, "bob", A, new_directory_cap(), now=NOW)  # type: ignore[arg-type]


def test_request_sealed_to_someone_else_cannot_be_opened() -> None:
    with pytest.raises(DecryptionError):
        open_follow_request(CAROL, REQUEST, NOW)
    with pytest.raises(DecryptionError):
        open_follow_request(BOB, REQUEST, NOW)  # not even by its sender


def test_request_forwarded_by_its_recipient_is_refused() -> None:
    # Alice re-seals Bob's signed request to Carol: the signature still holds,
    # but it names Alice as recipient.
    forwarded = _reseal(_unseal(ALICE, REQUEST), CAROL.box_public)
    with pytest.raises(SignatureError):
        open_follow_request(CAROL, forwarded, NOW)


def test_request_with_a_card_of_a_but_signed_by_c_is_refused() -> None:
    content = _content(ALICE, seal_follow_request(ALICE, "alice", A, now=NOW))
    content[3], content[4] = BOB.user_id, BOB.box_public
    # Carol signs a request carrying Alice's genuine card, to make Bob believe Alice asks.
    with pytest.raises(SignatureError):
        open_follow_request(BOB, _sign_and_seal(CAROL, B, content), NOW)
    # The same content signed by Alice herself is accepted.
    assert open_follow_request(BOB, _sign_and_seal(ALICE, B, content), NOW).sender == A


def test_tampering_any_byte_is_refused() -> None:
    for blob, opener in (
        (REQUEST, lambda b: open_follow_request(ALICE, b, NOW)),
        (GRANT, lambda b: open_grant(BOB, b, A, NOW)),
    ):
        for i in range(MAILBOX_BLOB_SIZE):
            bad = bytearray(blob)
            bad[i] ^= 1 << (i % 8)
            with pytest.raises(CryptreeError):
                opener(bytes(bad))


def test_wrong_sizes_are_refused() -> None:
    for blob in (b"", REQUEST[:-1], REQUEST + b"\x00", REQUEST * 2):
        with pytest.raises(FormatError):
            open_follow_request(ALICE, blob, NOW)
        with pytest.raises(FormatError):
            open_mailbox_blob(ALICE, blob, NOW)
    with pytest.raises(FormatError):
        open_follow_request(ALICE, "x" * 1024, NOW)  # type: ignore[arg-type]


def test_stale_and_future_requests_are_refused() -> None:
    assert open_follow_request(ALICE, REQUEST, NOW + REQUEST_MAX_AGE).request_id == REQUEST_ID
    with pytest.raises(ReplayError):
        open_follow_request(ALICE, REQUEST, NOW + REQUEST_MAX_AGE + 1)
    with pytest.raises(ReplayError):  # a replay of an old deposit
        open_follow_request(ALICE, REQUEST, NOW + 365 * 86400)
    assert open_follow_request(ALICE, REQUEST, NOW - MAX_CLOCK_SKEW).request_id == REQUEST_ID
    with pytest.raises(ReplayError):
        open_follow_request(ALICE, REQUEST, NOW - MAX_CLOCK_SKEW - 1)
    with pytest.raises(ReplayError):
        open_follow_request(ALICE, REQUEST, NOW + 3600, max_age=3599)


def test_replayed_request_is_refused_by_seen_ids() -> None:
    seen = SeenIds()
    seen.check_and_remember(open_follow_request(ALICE, REQUEST, NOW), NOW)
    with pytest.raises(ReplayError):
        seen.check_and_remember(open_follow_request(ALICE, REQUEST, NOW + 60), NOW + 60)
    # Restored from what was persisted, it still remembers.
    restored = SeenIds(seen.window, seen.entries())
    assert REQUEST_ID in restored
    with pytest.raises(ReplayError):
        restored.check_and_remember(open_follow_request(ALICE, REQUEST, NOW + 120), NOW + 120)
    # Past the window the id is forgotten; the timestamp check refuses the blob by then.
    later = NOW + seen.window + 1
    fresh = open_follow_request(ALICE, seal_follow_request(CAROL, "carol", A, now=later), later)
    seen.check_and_remember(fresh, later)
    assert REQUEST_ID not in seen and fresh.request_id in seen and len(seen) == 1
    with pytest.raises(ReplayError):
        open_follow_request(ALICE, REQUEST, later)


def test_seen_ids_refuses_corrupt_saved_state() -> None:
    with pytest.raises(FormatError):
        SeenIds(entries={b"short": NOW})
    with pytest.raises(CryptreeError):
        SeenIds(entries={b"\x00" * 16: -1})


# ---- grants ----------------------------------------------------------------------------------------


def test_accept_grant_round_trip() -> None:
    grant = open_grant(BOB, GRANT, A, NOW)
    assert isinstance(grant, Grant)
    assert grant.kind == "accept" and grant.cap == SHARING.read_cap() and grant.request_id == REQUEST_ID
    assert grant.sender == A and grant.timestamp == NOW and len(grant.grant_id) == 16
    assert open_grant(BOB, GRANT, None, NOW) == grant
    assert "read_key" not in repr(grant) and SHARING.read_key.hex() not in repr(grant)


@pytest.mark.parametrize(
    "cap",
    [new_directory_cap(), new_directory_cap().read_cap(), new_write_cap("file"), new_write_cap("file").read_cap()],
)
def test_share_grant_carries_any_cap(cap: ReadCap | WriteCap) -> None:
    grant = open_grant(BOB, seal_grant(ALICE, "alice", B, cap, "share", now=NOW), A, NOW)
    assert grant.kind == "share" and grant.cap == cap and type(grant.cap) is type(cap) and grant.request_id is None


def test_replace_grant() -> None:
    cap = new_directory_cap().read_cap()
    grant = open_grant(BOB, seal_grant(ALICE, "alice", B, cap, "replace", now=NOW), A, NOW)
    assert grant.kind == "replace" and grant.cap == cap


@pytest.mark.parametrize(
    ("cap", "kind", "request_id"),
    [
        (new_directory_cap(), "accept", b"\x00" * 16),  # accept gives read access only
        (new_write_cap("file").read_cap(), "accept", b"\x00" * 16),  # to a directory
        (new_directory_cap().read_cap(), "accept", None),  # answering a request
        (new_directory_cap().read_cap(), "accept", b"\x00" * 15),
        (new_directory_cap().read_cap(), "share", b"\x00" * 16),
        (new_directory_cap(), "replace", None),
        (new_directory_cap().read_cap(), "revoke", None),
        ("pluto:r:...", "share", None),
    ],
)
def test_bad_grants_are_not_sealed(cap: Any, kind: Any, request_id: Any) -> None:
    with pytest.raises(CapabilityError):
        seal_grant(ALICE, "alice", B, cap, kind, request_id, now=NOW)


def test_grant_from_unexpected_sender_is_refused() -> None:
    with pytest.raises(SignatureError):
        open_grant(BOB, GRANT, C, NOW)
    # Carol cannot pass off a grant as Alice's: her card names Carol...
    blob = seal_grant(CAROL, "alice", B, SHARING.read_cap(), "accept", REQUEST_ID, now=NOW)
    with pytest.raises(SignatureError):
        open_grant(BOB, blob, A, NOW)
    # ...and Alice's card with Carol's signature does not verify.
    content = _content(BOB, GRANT)
    with pytest.raises(SignatureError):
        open_grant(BOB, _sign_and_seal(CAROL, B, content), None, NOW)


def test_grant_sealed_to_someone_else_or_forwarded() -> None:
    with pytest.raises(DecryptionError):
        open_grant(CAROL, GRANT, A, NOW)
    with pytest.raises(SignatureError):
        open_grant(CAROL, _reseal(_unseal(BOB, GRANT), CAROL.box_public), A, NOW)


def test_grant_age() -> None:
    assert open_grant(BOB, GRANT, A, NOW + GRANT_MAX_AGE).kind == "accept"
    with pytest.raises(ReplayError):
        open_grant(BOB, GRANT, A, NOW + GRANT_MAX_AGE + 1)
    with pytest.raises(ReplayError):
        open_grant(BOB, GRANT, A, NOW - MAX_CLOCK_SKEW - 1)


def test_requests_and_grants_are_not_confused() -> None:
    with pytest.raises(FormatError):
        open_grant(ALICE, REQUEST, None, NOW)
    with pytest.raises(FormatError):
        open_follow_request(BOB, GRANT, NOW)
    assert isinstance(open_mailbox_blob(ALICE, REQUEST, NOW), FollowRequest)
    assert isinstance(open_mailbox_blob(BOB, GRANT, NOW), Grant)
    with pytest.raises(ReplayError):
        open_mailbox_blob(ALICE, REQUEST, NOW + REQUEST_MAX_AGE + 1)
    assert isinstance(open_mailbox_blob(BOB, GRANT, NOW + REQUEST_MAX_AGE + 1), Grant)


# ---- what the wire shows -------------------------------------------------------------------------


def test_every_blob_has_the_same_length() -> None:
    blobs = [
        seal_follow_request(BOB, "b", A, now=NOW),
        seal_follow_request(BOB, "b" * 32, A, REPLY, now=NOW),
        seal_follow_request(CAROL, "c" * 32, B, new_write_cap("file").read_cap(), now=2**63 - 1),
        seal_grant(ALICE, "a", B, SHARING.read_cap(), "accept", REQUEST_ID, now=0),
        seal_grant(ALICE, "a" * 32, B, new_write_cap("file"), "share", now=NOW),
        seal_grant(ALICE, "a" * 32, B, new_directory_cap(), "share", now=NOW),
        seal_grant(ALICE, "alice", C, new_directory_cap().read_cap(), "replace", now=NOW),
    ]
    assert {len(b) for b in blobs} == {MAILBOX_BLOB_SIZE}
    # Nothing in the clear repeats between two blobs of the same sender to the
    # same recipient (fresh one-time key and nonce each time).
    again = seal_follow_request(BOB, "bob", A, REPLY, now=NOW)
    assert again[:32] != REQUEST[:32] and again != REQUEST


def test_blobs_carry_no_identity_in_the_clear() -> None:
    for blob in (REQUEST, GRANT):
        for secret in (ALICE.user_id, BOB.user_id, ALICE.box_public, BOB.box_public, b"alice", b"bob"):
            assert secret not in blob


def test_sharing_directory_entries_are_ordinary_links() -> None:
    # What A puts in B's sharing directory is a normal, read-only DirLink.
    folder = new_directory_cap()
    entry = DirEntry("photos", link_child(SHARING, folder.read_cap()))
    assert entry.kind == "dir" and entry.child.wrapped_writer is None  # type: ignore[union-attr]


# ---- hostile input ---------------------------------------------------------------------------------

_OPENERS = (
    lambda keys, blob: open_follow_request(keys, blob, NOW),
    lambda keys, blob: open_grant(keys, blob, None, NOW),
    lambda keys, blob: open_mailbox_blob(keys, blob, NOW),
)


@SETTINGS
@given(st.binary(min_size=MAILBOX_BLOB_SIZE, max_size=MAILBOX_BLOB_SIZE), st.sampled_from(_OPENERS))
def test_random_blobs_of_the_right_length_raise_cryptree_error(blob: bytes, opener: Any) -> None:
    with pytest.raises(CryptreeError):
        opener(ALICE, blob)


@SETTINGS
@given(st.binary(max_size=1100))
def test_random_blobs_of_any_length_raise_cryptree_error(blob: bytes) -> None:
    with pytest.raises(CryptreeError):
        open_mailbox_blob(ALICE, blob, NOW)


@SETTINGS
@given(st.binary(min_size=follow._PLAINTEXT_SIZE, max_size=follow._PLAINTEXT_SIZE))
def test_random_plaintext_validly_sealed_raises_cryptree_error(plaintext: bytes) -> None:
    # Anyone can seal to a public key, so the decoder sees attacker plaintext.
    with pytest.raises(CryptreeError):
        open_mailbox_blob(ALICE, _reseal(plaintext, ALICE.box_public), NOW)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.binary(max_size=40),
    st.text(max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=20,
)


@SETTINGS
@given(values, st.binary(max_size=64))
def test_random_cbor_validly_framed_raises_cryptree_error(value: Any, sig: bytes) -> None:
    content = cbor2.dumps(value)[: follow.MAX_CONTENT_SIZE]
    frame = len(content).to_bytes(4, "big") + content + bytes(follow.MAX_CONTENT_SIZE - len(content))
    plaintext = sig.ljust(64, b"\x00") + frame
    with pytest.raises(CryptreeError):
        open_mailbox_blob(ALICE, _reseal(plaintext, ALICE.box_public), NOW)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value = copy.copy(value)
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


VALID_CONTENTS = [_content(ALICE, REQUEST), _content(BOB, GRANT)]
RECIPIENT = [(ALICE, A), (BOB, B)]


@SETTINGS
@given(st.sampled_from([0, 1]), st.data(), values)
def test_mutated_fields_signed_by_the_sender_raise_cryptree_error(which: int, data: Any, new: Any) -> None:
    # A genuine sender who does not follow the format: every field replaced by
    # anything, signed and sealed properly. Either it still opens, or it is a
    # CryptreeError.
    content = VALID_CONTENTS[which]
    path = data.draw(st.sampled_from(_paths(content)))
    mutated = _replace(content, path, new)
    signer = BOB if which == 0 else ALICE
    keys, contact = RECIPIENT[which]
    try:
        blob = _sign_and_seal(signer, contact, mutated)
    except FormatError:
        return  # too large to fit the fixed size
    try:
        opened = open_mailbox_blob(keys, blob, NOW)
    except CryptreeError:
        return
    assert isinstance(opened, (FollowRequest, Grant))


@SETTINGS
@given(st.integers(min_value=0, max_value=MAX_CARD_SIZE + 5), st.binary(max_size=MAX_CARD_SIZE + 5))
def test_hostile_cards_raise_cryptree_error(cut: int, junk: bytes) -> None:
    for blob in (junk, ALICE_CARD[:cut], ALICE_CARD[:cut] + junk):
        if blob == ALICE_CARD:
            continue
        with pytest.raises(CryptreeError):
            open_card(blob)


@SETTINGS
@given(st.data(), values)
def test_mutated_cards_signed_by_the_owner_raise_cryptree_error(data: Any, new: Any) -> None:
    fields = cbor2.loads(ALICE_CARD[:-64])
    path = data.draw(st.sampled_from(_paths(fields)))
    body = _cbor.dumps(_replace(fields, path, new))
    try:
        contact = open_card(body + ALICE.identity.sign(follow._CARD_DOMAIN + body).signature)
    except CryptreeError:
        return
    assert isinstance(contact, Contact)


@pytest.mark.parametrize(
    "call",
    [
        lambda: open_follow_request("alice", REQUEST, NOW),  # type: ignore[arg-type]
        lambda: open_follow_request(ALICE, REQUEST, "now"),  # type: ignore[arg-type]
        lambda: open_follow_request(ALICE, REQUEST, True),  # type: ignore[arg-type]
        lambda: open_follow_request(ALICE, REQUEST, NOW, max_age=-1),
        lambda: open_mailbox_blob(ALICE, b"", NOW, max_skew=None),  # type: ignore[arg-type]
        lambda: open_grant(BOB, GRANT, "alice", NOW),  # type: ignore[arg-type]
        lambda: seal_follow_request(BOB, "bob", ALICE.box_public, now=NOW),  # type: ignore[arg-type]
        lambda: seal_follow_request(BOB, "bob", A, now=-1),
        lambda: seal_follow_request(BOB, "bob", A, now=1.5),  # type: ignore[arg-type]
        lambda: fingerprint(ALICE),  # type: ignore[arg-type]
        lambda: open_card(None),  # type: ignore[arg-type]
        lambda: SeenIds().check_and_remember(REQUEST, NOW),  # type: ignore[arg-type]
    ],
)
def test_misuse_raises_cryptree_error(call: Any) -> None:
    with pytest.raises(CryptreeError):
        call()
