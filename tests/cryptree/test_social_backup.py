"""The social backup slot: only the seed opens it, alterations and other slots are refused."""

from __future__ import annotations

import dataclasses

import pytest

from cryptree.errors import CryptreeError
from cryptree.filenode import FileNode, InlineData, open_file_slot, seal_file_slot
from cryptree.identity import UserKeys, new_seed
from cryptree.slot import sign_slot
from cryptree.social_backup import open_social_backup, seal_social_backup, social_backup_writer


def test_the_same_seed_finds_and_opens_the_backup_on_another_machine() -> None:
    seed = new_seed()
    body = b'{"followers": {"bob": "..."}}'
    slot = seal_social_backup(UserKeys.from_seed(seed), 7, body)
    again = UserKeys.from_seed(seed)  # "a new machine": only the seed is shared
    assert slot.writer == social_backup_writer(again) and slot.seq == 7
    assert open_social_backup(again, slot) == body


def test_the_address_is_unrelated_to_the_identity_and_the_root() -> None:
    keys = UserKeys.from_seed(new_seed())
    writer = social_backup_writer(keys)
    assert writer not in (keys.user_id, keys.root.writer, keys.box_public)


def test_sizes_are_bucketed() -> None:
    keys = UserKeys.from_seed(new_seed())
    small = {len(seal_social_backup(keys, 1, b"x" * n).payload) for n in (0, 10, 1000, 3000)}
    assert len(small) == 1  # a handful of contacts or none: the same size


def test_another_users_backup_a_tampered_one_or_a_forged_one_is_refused() -> None:
    alice, mallory = UserKeys.from_seed(new_seed()), UserKeys.from_seed(new_seed())
    slot = seal_social_backup(alice, 1, b"alice's contacts")
    with pytest.raises(CryptreeError):
        open_social_backup(mallory, slot)  # not hers: another writer
    flipped = bytearray(slot.payload)
    flipped[-1] ^= 1
    with pytest.raises(CryptreeError):
        open_social_backup(alice, dataclasses.replace(slot, payload=bytes(flipped)))
    with pytest.raises(CryptreeError):  # replayed under another sequence number
        open_social_backup(alice, dataclasses.replace(slot, seq=2))
    # validly signed with the backup key, but garbage inside
    with pytest.raises(CryptreeError):
        open_social_backup(alice, sign_slot(alice.social.signing_key, 3, b"\x01" + bytes(40)))


def test_a_file_node_slot_under_the_same_keys_is_not_a_backup_nor_the_reverse() -> None:
    keys = UserKeys.from_seed(new_seed())
    node_slot = seal_file_slot(keys.social, 1, FileNode(3, InlineData(b"abc")))
    with pytest.raises(CryptreeError):
        open_social_backup(keys, node_slot)
    with pytest.raises(CryptreeError):
        open_file_slot(keys.social, seal_social_backup(keys, 1, b"abc"))
