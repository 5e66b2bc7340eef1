"""Following and sharing: the client side of follow requests, grants and shared folders.

Local state lives in HOME/social.json (mode 0600): who you follow and what
they gave you, who follows you and the sharing folder you made for each,
what you shared with whom, and the ids of mailbox messages already handled
(replay protection). The network sees only the coordinator's mailboxes
(fixed-size sealed blobs deposited over throwaway keys) and ordinary slots.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

from cryptree.caps import ReadCap, WriteCap, parse_cap
from cryptree.dirnode import Directory, DirEntry, DirLink, child_write_cap, link_child, new_directory_cap
from cryptree.errors import CryptreeError
from cryptree.follow import (
    Contact,
    FollowRequest,
    Grant,
    SeenIds,
    open_card,
    open_mailbox_blob,
    seal_follow_request,
    seal_grant,
    sign_card,
    validate_username,
)
from cryptree.social_backup import open_social_backup, seal_social_backup, social_backup_writer
from pluto_fs.errors import HomeError, NotFound, PlutoError
from pluto_fs.home import Home
from pluto_fs.volume.volume import Volume
from transport.coordinator.client import deposit_anonymously


@dataclass
class SocialState:
    """Everything social this device knows (JSON on disk)."""

    username: str | None = None
    following: dict[str, dict] = field(default_factory=dict)  # owner -> {card, status, share_dir, write_shares}
    requests: dict[str, dict] = field(default_factory=dict)  # would-be follower -> {card, request_id}
    followers: dict[str, dict] = field(default_factory=dict)  # follower -> {card, share_dir (write cap)}
    shares: list[dict] = field(default_factory=list)  # {path, user, write, name}
    seen: dict[str, int] = field(default_factory=dict)  # message id hex -> timestamp

    @classmethod
    def load(cls, home: Home) -> SocialState:
        """Read HOME/social.json (an empty state if there is none)."""
        path = home.path / "social.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise HomeError(f"{path} is unreadable ({exc}); fix or remove it") from None
        try:
            return cls.from_dict(raw)
        except ValueError as exc:
            raise HomeError(f"{path} is unreadable ({exc}); fix or remove it") from None

    @classmethod
    def from_dict(cls, raw: object) -> SocialState:
        """A state from its JSON form; ValueError if the shape is wrong (unknown keys are ignored)."""
        if not isinstance(raw, dict):
            raise ValueError("social state must be a JSON object")
        fields = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        shapes = {"username": (str, type(None)), "following": dict, "requests": dict, "followers": dict,
                  "shares": list, "seen": dict}
        for name, value in fields.items():
            if not isinstance(value, shapes[name]):
                raise ValueError(f"social state field {name!r} has the wrong type")
        return cls(**fields)

    def encode(self) -> bytes:
        """The canonical bytes of this state (what the network backup holds)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    def save(self, home: Home) -> None:
        """Write HOME/social.json atomically, readable only by its owner."""
        path = home.path / "social.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def seen_ids(self) -> SeenIds:
        """The replay window as cryptree's SeenIds."""
        return SeenIds(entries={bytes.fromhex(k): v for k, v in self.seen.items()})

    def remember(self, seen: SeenIds) -> None:
        """Store the replay window back."""
        self.seen = {k.hex(): v for k, v in seen.entries().items()}


def _need_username(state: SocialState) -> str:
    if not state.username:
        raise HomeError("register a username first: pluto register NAME")
    return state.username


async def register(volume: Volume, state: SocialState, username: str) -> None:
    """Claim `username` for this identity and publish its signed contact card."""
    try:
        validate_username(username)
    except CryptreeError as exc:
        raise HomeError(str(exc)) from None
    coordinator = volume.net.coordinator
    await coordinator.claim_username(volume.keys.identity, username)
    await coordinator.put_card(username, sign_card(volume.keys, username))
    state.username = username


async def contact_of(volume: Volume, username: str) -> Contact:
    """The verified contact card of `username`."""
    card = await volume.net.coordinator.get_card(username)
    if card is None:
        raise NotFound(f"no user {username!r} on this coordinator (they must run `pluto register`)")
    try:
        contact = open_card(card)
    except CryptreeError as exc:
        raise PlutoError(f"the card of {username!r} does not verify ({exc}); do not trust it") from None
    if contact.username != username:
        raise PlutoError(f"the coordinator answered with another user's card for {username!r}")
    return contact


async def _deposit(volume: Volume, mailbox: bytes, blob: bytes) -> None:
    # A throwaway transport key: the coordinator cannot tie the deposit to this device.
    await deposit_anonymously(volume.net.coordinator_address, mailbox, blob, timeout=volume.net.timeout)


async def follow(volume: Volume, state: SocialState, username: str) -> None:
    """Send a sealed, fixed-size follow request into `username`'s mailbox."""
    me = _need_username(state)
    contact = await contact_of(volume, username)
    blob = seal_follow_request(volume.keys, me, contact, now=int(time.time()))
    await _deposit(volume, contact.user_id, blob)
    state.following[username] = {"card": contact_json(contact), "status": "pending",
                                 "share_dir": None, "write_shares": {}}


def contact_json(contact: Contact) -> str:
    """A contact as stored locally (its fields, hex-encoded)."""
    return json.dumps({"user_id": contact.user_id.hex(), "box_public": contact.box_public.hex(),
                       "username": contact.username})


def _contact(stored: str) -> Contact:
    raw = json.loads(stored)
    return Contact(bytes.fromhex(raw["user_id"]), bytes.fromhex(raw["box_public"]), raw["username"])


async def process_mailbox(volume: Volume, state: SocialState) -> list[str]:
    """Open every mailbox message: file follow requests, apply grants; return what happened."""
    coordinator = volume.net.coordinator
    items = await coordinator.fetch_mailbox(volume.keys.identity)
    seen = state.seen_ids()
    now = int(time.time())
    notes: list[str] = []
    done: list[int] = []
    for item in items:
        done.append(item.id)
        try:
            message = open_mailbox_blob(volume.keys, item.blob, now)
            seen.check_and_remember(message, now)
        except CryptreeError as exc:
            notes.append(f"ignored a mailbox message: {exc}")
            continue
        sender = message.sender.username
        if isinstance(message, FollowRequest):
            state.requests[sender] = {"card": contact_json(message.sender),
                                      "request_id": message.request_id.hex()}
            notes.append(f"{sender} asks to follow you")
            continue
        assert isinstance(message, Grant)
        followed = state.following.get(sender)
        if followed is None or _contact(followed["card"]).user_id != message.sender.user_id:
            notes.append(f"ignored a grant from {sender}, whom you do not follow")
            continue
        if message.kind == "accept" and isinstance(message.cap, ReadCap):
            followed.update(status="accepted", share_dir=message.cap.to_string())
            notes.append(f"{sender} accepted: their shares appear under shared/{sender}/")
        elif message.kind == "share" and isinstance(message.cap, WriteCap):
            followed["write_shares"][message.cap.writer.hex()] = message.cap.to_string()
            notes.append(f"{sender} gave you write access to a shared folder")
        elif message.kind == "replace" and isinstance(message.cap, ReadCap):
            followed["share_dir"] = message.cap.to_string()
    state.remember(seen)
    if done:
        await coordinator.delete_from_mailbox(volume.keys.identity, done)
    return notes


async def accept(volume: Volume, state: SocialState, username: str) -> None:
    """Accept a follow request: make a sharing folder for them and send its read capability."""
    me = _need_username(state)
    request = state.requests.pop(username, None)
    if request is None:
        raise NotFound(f"no follow request from {username!r}; run `pluto requests`")
    contact = _contact(request["card"])
    share_dir = new_directory_cap()
    await volume.save_dir(share_dir, [], None, 0)
    blob = seal_grant(volume.keys, me, contact, share_dir.read_cap(), "accept",
                      bytes.fromhex(request["request_id"]), now=int(time.time()))
    await _deposit(volume, contact.user_id, blob)
    state.followers[username] = {"card": request["card"], "share_dir": share_dir.to_string()}


def reject(state: SocialState, username: str) -> None:
    """Drop a follow request."""
    if state.requests.pop(username, None) is None:
        raise NotFound(f"no follow request from {username!r}")


async def share(volume: Volume, state: SocialState, folder: WriteCap, name: str, path: str, username: str,
                write: bool) -> None:
    """Give follower `username` read (or write) access to `folder`, shown to them as `name`."""
    me = _need_username(state)
    follower = state.followers.get(username)
    if follower is None:
        raise NotFound(f"{username!r} does not follow you (they run `pluto follow {me}`, you `pluto accept`)")
    if write:  # the write key travels sealed in a grant; the listing below shows the folder's name
        blob = seal_grant(volume.keys, me, _contact(follower["card"]), folder, "share", now=int(time.time()))
        await _deposit(volume, _contact(follower["card"]).user_id, blob)
    share_dir = parse_cap(follower["share_dir"])
    assert isinstance(share_dir, WriteCap)

    def add(entries: dict[str, DirEntry]) -> None:
        entries[name] = DirEntry(name, link_child(share_dir, folder.read_cap()), mode=0o555, size=0)

    await volume.update_dir(share_dir, add)
    state.shares = [s for s in state.shares if not (s["path"] == path and s["user"] == username)]
    state.shares.append({"path": path, "user": username, "write": write, "name": name})


async def withdraw(volume: Volume, state: SocialState, path: str, username: str) -> dict:
    """Remove `username`'s entry for `path` from their sharing folder; return the share record."""
    record = next((s for s in state.shares if s["path"] == path and s["user"] == username), None)
    if record is None:
        raise NotFound(f"{path} is not shared with {username!r} (see `pluto shares`)")
    state.shares.remove(record)
    share_dir = parse_cap(state.followers[username]["share_dir"])
    assert isinstance(share_dir, WriteCap)

    def drop(entries: dict[str, DirEntry]) -> None:
        entries.pop(record["name"], None)

    await volume.update_dir(share_dir, drop)
    return record


def shares_for_mount(home: Home) -> dict[str, tuple[ReadCap, dict[bytes, WriteCap]]]:
    """What others share with us, for the mount's shared/ folder: owner -> (sharing folder, write caps)."""
    state = SocialState.load(home)
    out: dict[str, tuple[ReadCap, dict[bytes, WriteCap]]] = {}
    for owner, info in state.following.items():
        if not info.get("share_dir"):
            continue
        try:
            share_dir = parse_cap(info["share_dir"])
            writable = {bytes.fromhex(w): parse_cap(c) for w, c in info.get("write_shares", {}).items()}
        except (CryptreeError, ValueError):
            continue  # a damaged entry hides that owner's shares rather than the whole mount
        if isinstance(share_dir, ReadCap):
            out[owner] = (share_dir, {w: c for w, c in writable.items() if isinstance(c, WriteCap)})
    return out


async def rotate_folder(volume: Volume, parent: WriteCap, name: str) -> WriteCap:
    """Re-key the folder `name` in `parent` and all folders below it; return its new write cap.

    Every folder gets fresh keys and a fresh slot; the old slots stay as they
    were, so what someone already could read stays readable to them, but
    nothing written from now on reaches the old keys.
    """
    parent_dir = await volume.load_dir(parent)
    entries = parent_dir.by_name()
    entry = entries.get(name)
    if entry is None or not isinstance(entry.child, DirLink):
        raise NotFound(f"no folder {name!r} there")
    new_cap = await _reseal(volume, child_write_cap(parent, entry))

    def relink(current: dict[str, DirEntry]) -> None:
        current[name] = replace(current.get(name, entry), child=link_child(parent, new_cap))

    await volume.update_dir(parent, relink, base=parent_dir)
    return new_cap


async def _reseal(volume: Volume, old: WriteCap) -> WriteCap:
    directory: Directory = await volume.load_dir(old)
    new = new_directory_cap()
    entries = []
    for e in directory.entries:
        if isinstance(e.child, DirLink) and e.child.wrapped_writer is not None:
            # the child's write key is re-wrapped under the new parent key (read-only links stay as they are)
            e = replace(e, child=link_child(new, await _reseal(volume, child_write_cap(old, e))))
        entries.append(e)
    await volume.save_dir(new, entries, directory.attrs, 0)
    return new


# ---- the backup on the network -----------------------------------------------------------


async def back_up(volume: Volume, state: SocialState) -> bool:
    """Seal `state` into the user's social backup slot; False if the network already held it."""
    body = state.encode()
    current = await volume.slots.read(social_backup_writer(volume.keys))
    if current is not None:
        try:
            if open_social_backup(volume.keys, current) == body:
                return False
        except CryptreeError:
            pass  # unreadable: overwrite it with a good one
    try:
        slot = seal_social_backup(volume.keys, current.seq + 1 if current is not None else 1, body)
    except CryptreeError as exc:
        raise PlutoError(f"the social state is too large to back up ({exc}); remove old shares") from None
    await volume.slots.write(slot)
    return True


async def fetch_backup(volume: Volume) -> SocialState | None:
    """The social state backed up on the network, or None if there is none."""
    slot = await volume.slots.read(social_backup_writer(volume.keys))
    if slot is None:
        return None
    try:
        return SocialState.from_dict(json.loads(open_social_backup(volume.keys, slot)))
    except (CryptreeError, ValueError) as exc:
        raise PlutoError(f"the social backup on the network does not open ({exc}); "
                         "followers and shares must be set up again") from None
