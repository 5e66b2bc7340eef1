"""A user's identity: the 256-bit seed, its 24-word recovery phrase, and every key derived from it.

Everything a user owns hangs off the seed, so `pluto restore` with the 24
words on a fresh machine brings back the identity, the root directory and the
chunk-id key, and from the root the whole tree. Sub-keys are HKDF-SHA256
expansions of the seed under distinct labels (listed in docs/FORMATS.md §1.4);
the labels are part of the format and must never change.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

from mnemonic import Mnemonic
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from cryptree.caps import WriteCap
from cryptree.errors import PhraseError
from cryptree.keys import derive_subkey

SEED_SIZE = 32
PHRASE_WORDS = 24

LABEL_IDENTITY = b"pluto/v1/identity/ed25519"
LABEL_BOX = b"pluto/v1/box/x25519"
LABEL_ROOT_WRITE = b"pluto/v1/root/writer-seed"
LABEL_ROOT_READ = b"pluto/v1/root/read-key"
LABEL_CHUNK_MAC = b"pluto/v1/chunk/mac-key"
LABEL_CHUNKER_SEED = b"pluto/v1/chunk/cdc-seed"
LABEL_PACK = b"pluto/v1/pack/key"
LABEL_SOCIAL_SLOT = b"pluto/v1/social/writer-seed"
LABEL_SOCIAL_KEY = b"pluto/v1/social/aead-key"


@lru_cache(maxsize=1)
def _mnemonic() -> Mnemonic:
    # Loads the word list shipped inside the package once, not per call.
    return Mnemonic("english")


@lru_cache(maxsize=1)
def _wordlist() -> tuple[list[str], dict[str, int], dict[str, str]]:
    words = _mnemonic().wordlist
    index = {w: i for i, w in enumerate(words)}
    # BIP39 English words are unique in their first four letters, which is
    # what lets us suggest the intended word for a typo'd ending.
    by_prefix = {w[:4]: w for w in words}
    return words, index, by_prefix


def new_seed() -> bytes:
    """A fresh 256-bit user seed from the OS CSPRNG (shown to the user once, as a phrase)."""
    return secrets.token_bytes(SEED_SIZE)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
        raise PhraseError(f"a user seed must be {SEED_SIZE} bytes; restore it from the 24-word phrase")


def seed_to_phrase(seed: bytes) -> str:
    """The 24-word BIP39 English recovery phrase of a 32-byte seed, words separated by single spaces."""
    _check_seed(seed)
    return _mnemonic().to_mnemonic(seed)


def phrase_to_seed(phrase: str) -> bytes:
    """Recover the 32-byte seed from a recovery phrase.

    Tolerates any whitespace between words and any letter case. Raises
    PhraseError for a wrong word count, the first word not in the BIP39
    English list (with a suggestion when its first four letters identify one),
    or a checksum mismatch (a wrong or swapped word).
    """
    if not isinstance(phrase, str):
        raise PhraseError("the recovery phrase must be text: 24 words separated by spaces")
    given = unicodedata.normalize("NFKD", phrase).lower().split()
    if len(given) != PHRASE_WORDS:
        raise PhraseError(f"recovery phrase has {len(given)} words; it must have {PHRASE_WORDS}")
    _, index, by_prefix = _wordlist()
    value = 0
    for pos, word in enumerate(given, start=1):
        i = index.get(word)
        if i is None:
            hint = by_prefix.get(word[:4]) if len(word) >= 4 else None
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            raise PhraseError(
                f"word {pos} of the recovery phrase, {word!r}, is not in the BIP39 English word list"
                f"{suggestion}; check its spelling"
            )
        value = (value << 11) | i
    # 24 words = 264 bits: 256 bits of seed then an 8-bit SHA-256 checksum.
    seed = (value >> 8).to_bytes(SEED_SIZE, "big")
    if hashlib.sha256(seed).digest()[0] != value & 0xFF:
        raise PhraseError(
            "recovery phrase checksum does not match; a word is wrong or two words are swapped, "
            "compare it with your written copy"
        )
    return seed


@dataclass(frozen=True)
class UserKeys:
    """Every key derived from a user's seed. Same seed, same keys, on any machine."""

    identity: SigningKey = field(repr=False)  # Ed25519: signs as the user (coordinator, follow grants)
    box: PrivateKey = field(repr=False)  # X25519: opens sealed follow requests and grants
    root: WriteCap = field(repr=False)  # write capability of the user's root directory
    chunk_mac_key: bytes = field(repr=False)  # keyed-BLAKE3 key for chunk ids and chunk keys
    chunker_seed: int = field(repr=False)  # per-user FastCDC gear seed (see chunks.py)
    pack_key: bytes = field(repr=False)  # derives each pack record's write key (see packrecord.py)
    # The slot holding the sealed backup of the user's social state (social_backup.py): not linked
    # from the tree and unrelated to the identity key, so only the seed leads to it.
    social: WriteCap = field(repr=False)

    @classmethod
    def from_seed(cls, seed: bytes) -> UserKeys:
        """Derive all of a user's keys from the 32-byte seed (deterministic)."""
        _check_seed(seed)
        root = WriteCap("dir", derive_subkey(seed, LABEL_ROOT_WRITE), derive_subkey(seed, LABEL_ROOT_READ))
        # pyfastcdc takes a seed below 2**63 and treats 0 as "no seed".
        cdc_seed = int.from_bytes(derive_subkey(seed, LABEL_CHUNKER_SEED, 8), "big") >> 1
        return cls(
            identity=SigningKey(derive_subkey(seed, LABEL_IDENTITY)),
            box=PrivateKey(derive_subkey(seed, LABEL_BOX)),
            root=root,
            chunk_mac_key=derive_subkey(seed, LABEL_CHUNK_MAC),
            chunker_seed=cdc_seed or 1,
            pack_key=derive_subkey(seed, LABEL_PACK),
            social=WriteCap("file", derive_subkey(seed, LABEL_SOCIAL_SLOT), derive_subkey(seed, LABEL_SOCIAL_KEY)),
        )

    @classmethod
    def from_phrase(cls, phrase: str) -> UserKeys:
        """Derive all of a user's keys from the 24-word recovery phrase."""
        return cls.from_seed(phrase_to_seed(phrase))

    @property
    def user_id(self) -> bytes:
        """The user's public identity: the 32-byte Ed25519 verify key."""
        return bytes(self.identity.verify_key)

    @property
    def box_public(self) -> bytes:
        """The user's 32-byte X25519 public key (what followers seal requests to)."""
        return bytes(self.box.public_key)

    def __repr__(self) -> str:
        return f"UserKeys(user_id={self.user_id.hex()[:16]}…)"
