"""The user's social state, sealed into a slot only the recovery phrase leads to.

Who you follow (and the sharing folders they gave you), your followers (and
the sharing folder you made for each), what you shared and the replay window
live on the device; without a copy on the network, `pluto restore` would
bring back the files but no share in either direction. The backup is one
mutable slot:

- its address and keys come from the seed alone (`UserKeys.social`, a
  file-kind write capability under labels of their own), so nothing in the
  tree links to it and the address says nothing about the identity key;
- the body (opaque bytes: the client's own state encoding) is padded to a
  size bucket, encrypted and signed exactly like a file node slot, under a
  domain of its own so neither can be passed off as the other.

Peers see an opaque slot of a bucketed size that changes when the user runs
a social command; they cannot tell it from a file node's slot.
"""

from __future__ import annotations

from cryptree._slotbox import open_from_slot, seal_into_slot
from cryptree.identity import UserKeys
from cryptree.slot import SignedSlot

_DOMAIN = b"pluto/v1/social-backup\x00"


def social_backup_writer(keys: UserKeys) -> bytes:
    """The slot address (Ed25519 public key) of the user's social backup."""
    return keys.social.writer


def seal_social_backup(keys: UserKeys, seq: int, body: bytes) -> SignedSlot:
    """Pad, encrypt and sign `body` as version `seq` of the user's social backup slot."""
    return seal_into_slot(keys.social, seq, body, _DOMAIN, "file", "social backup")


def open_social_backup(keys: UserKeys, slot: SignedSlot) -> bytes:
    """The body of a social backup slot; CryptreeError if it is not this user's, or was altered."""
    return bytes(open_from_slot(keys.social, slot, _DOMAIN, "file", "social backup"))
