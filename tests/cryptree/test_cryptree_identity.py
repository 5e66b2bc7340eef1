"""Recovery phrase and key derivation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptree.errors import CryptreeError, PhraseError
from cryptree.identity import UserKeys, new_seed, phrase_to_seed, seed_to_phrase

ZERO_PHRASE = " ".join(["abandon"] * 23 + ["art"])  # BIP39 test vector for 32 zero bytes
FF_PHRASE = " ".join(["zoo"] * 23 + ["vote"])  # ... and for 32 0xff bytes


def test_bip39_vectors() -> None:
    assert seed_to_phrase(bytes(32)) == ZERO_PHRASE
    assert seed_to_phrase(b"\xff" * 32) == FF_PHRASE
    assert phrase_to_seed(ZERO_PHRASE) == bytes(32)
    assert phrase_to_seed(FF_PHRASE) == b"\xff" * 32


@settings(max_examples=50)
@given(st.binary(min_size=32, max_size=32))
def test_phrase_round_trip(seed: bytes) -> None:
    phrase = seed_to_phrase(seed)
    assert len(phrase.split(" ")) == 24
    assert phrase_to_seed(phrase) == seed


def test_new_seed_is_random_and_round_trips() -> None:
    a, b = new_seed(), new_seed()
    assert len(a) == 32 and a != b
    assert phrase_to_seed(seed_to_phrase(a)) == a


def test_phrase_normalises_whitespace_and_case() -> None:
    seed = new_seed()
    words = seed_to_phrase(seed).split()
    messy = "  \t" + "\n ".join(w.upper() if i % 2 else w.capitalize() for i, w in enumerate(words)) + " \n"
    assert phrase_to_seed(messy) == seed


@pytest.mark.parametrize("count", [0, 1, 12, 23, 25])
def test_wrong_word_count(count: int) -> None:
    words = (ZERO_PHRASE.split() * 2)[:count]
    with pytest.raises(PhraseError, match=f"has {count} words; it must have 24"):
        phrase_to_seed(" ".join(words))


def test_unknown_word_is_named_with_suggestion() -> None:
    words = ZERO_PHRASE.split()
    words[4] = "abandn"
    words[9] = "qwerty"
    with pytest.raises(PhraseError) as info:
        phrase_to_seed(" ".join(words))
    msg = str(info.value)
    assert "word 5" in msg and "'abandn'" in msg and "qwerty" not in msg
    assert "did you mean 'abandon'" in msg and "\n" not in msg
    words[4] = "abandon"
    with pytest.raises(PhraseError, match=r"word 10 .*'qwerty'"):
        phrase_to_seed(" ".join(words))


def test_bad_checksum() -> None:
    words = ZERO_PHRASE.split()
    words[-1] = "zoo"
    with pytest.raises(PhraseError, match="checksum"):
        phrase_to_seed(" ".join(words))


def test_swapped_words_fail_checksum() -> None:
    seed = bytes(range(32))
    words = seed_to_phrase(seed).split()
    i = next(i for i in range(23) if words[i] != words[i + 1])
    words[i], words[i + 1] = words[i + 1], words[i]
    with pytest.raises(PhraseError):
        phrase_to_seed(" ".join(words))


def test_phrase_errors_are_value_errors_and_reject_non_text() -> None:
    with pytest.raises(ValueError):
        phrase_to_seed(123)  # type: ignore[arg-type]
    with pytest.raises(PhraseError):
        seed_to_phrase(b"short")
    with pytest.raises(PhraseError):
        UserKeys.from_seed(b"\x00" * 31)


def test_derivation_is_deterministic() -> None:
    seed = new_seed()
    a, b = UserKeys.from_seed(seed), UserKeys.from_phrase(seed_to_phrase(seed))
    assert bytes(a.identity) == bytes(b.identity)
    assert bytes(a.box) == bytes(b.box)
    assert a.root == b.root
    assert a.chunk_mac_key == b.chunk_mac_key
    assert a.chunker_seed == b.chunker_seed
    assert a.user_id == bytes(a.identity.verify_key) and len(a.box_public) == 32


def test_derivation_separates_keys_and_users() -> None:
    a, b = UserKeys.from_seed(bytes(32)), UserKeys.from_seed(b"\x01" + bytes(31))
    secrets_a = [bytes(a.identity), bytes(a.box), a.root.writer_seed, a.root.read_key, a.chunk_mac_key]
    secrets_b = [bytes(b.identity), bytes(b.box), b.root.writer_seed, b.root.read_key, b.chunk_mac_key]
    # Every derived secret is distinct from every other, within and across users.
    everything = secrets_a + secrets_b + [bytes(32)]
    assert len(set(everything)) == len(everything)
    assert a.chunker_seed != b.chunker_seed and 0 < a.chunker_seed < 2**63
    assert a.root.kind == "dir"


def test_repr_does_not_leak_secrets() -> None:
    keys = UserKeys.from_seed(bytes(32))
    text = repr(keys) + repr(keys.root) + repr(keys.root.read_cap())
    for secret in (keys.root.writer_seed, keys.root.read_key, keys.chunk_mac_key, bytes(keys.identity)):
        assert secret.hex()[:16] not in text


def test_errors_share_a_base() -> None:
    assert issubclass(PhraseError, CryptreeError) and issubclass(CryptreeError, ValueError)
