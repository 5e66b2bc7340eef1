"""`pluto register`, `follow`, `requests`, `accept`, `reject`, `share`, `unshare`, `shares`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import trio

from cryptree.caps import WriteCap
from pluto_fs import home_lock
from pluto_fs.errors import HomeError, PlutoError
from pluto_fs.home import Home, home_path
from pluto_fs.mount.run import is_mounted, pid_file
from pluto_fs.volume import social
from pluto_fs.volume.tree import Tree, split_path
from pluto_fs.volume.volume import open_volume
from transport.errors import TransportError


def _run(args: argparse.Namespace, body) -> object:
    """Open the volume and the social state, run `body(volume, state)`, save the state.

    Holds HOME/social.lock, so two social commands never interleave their
    updates of social.json (they may run while the home is mounted: they do
    not write your own folders; see pluto_fs/home_lock.py).
    """
    home = Home(home_path(args.home))
    with home_lock.hold(home, args.command, name=home_lock.SOCIAL_LOCK):
        return _run_locked(home, body)


def _run_locked(home: Home, body) -> object:

    async def main():
        state = social.SocialState.load(home)
        async with open_volume(home) as volume:
            result = await body(volume, state)
            state.save(home)  # first: the local copy is what the next command works from
            try:
                await social.back_up(volume, state)  # so `pluto restore` brings it back
            except (PlutoError, TransportError) as exc:
                print(f"pluto: warning: the social state is saved here but not backed up to the network ({exc}); "
                      "the next social command tries again", file=sys.stderr)
        return result

    return trio.run(main)


def _volume_path(home: Home, text: str) -> str:
    """A folder given as a volume path (/Photos) or as a path inside this user's mount."""
    if text.startswith("/") and os.path.exists(text):
        try:
            info = json.loads(pid_file(home).read_text())
            mountpoint = Path(info["mountpoint"])
        except (FileNotFoundError, ValueError, KeyError):
            mountpoint = None
        if mountpoint is not None and is_mounted(mountpoint):
            real = Path(os.path.realpath(text))
            if real == mountpoint or mountpoint in real.parents:
                return "/" + str(real.relative_to(mountpoint))
    return "/" + "/".join(split_path(text))


def _mounted(home: Home) -> bool:
    try:
        info = json.loads(pid_file(home).read_text())
        return is_mounted(Path(info["mountpoint"]))
    except (FileNotFoundError, ValueError, KeyError):
        return False


def cmd_register(args: argparse.Namespace) -> int:
    """Claim a username and publish your contact card."""
    async def body(volume, state):
        await social.register(volume, state, args.username)

    _run(args, body)
    print(f"registered as {args.username}; others can now `pluto follow {args.username}`")
    return 0


def cmd_follow(args: argparse.Namespace) -> int:
    """Ask to follow a user."""
    async def body(volume, state):
        await social.follow(volume, state, args.user)

    _run(args, body)
    print(f"follow request sent to {args.user}; once they accept, run `pluto requests` to pick up their shares")
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    """Read the mailbox: list follow requests, apply grants."""
    async def body(volume, state):
        notes = await social.process_mailbox(volume, state)
        return notes, dict(state.requests)

    notes, pending = _run(args, body)
    for note in notes:
        print(note)
    if pending:
        print("waiting for your answer: " + ", ".join(sorted(pending)) + "  (pluto accept USER / pluto reject USER)")
    elif not notes:
        print("no new requests")
    return 0


def cmd_accept(args: argparse.Namespace) -> int:
    """Accept a follow request."""
    async def body(volume, state):
        await social.accept(volume, state, args.user)

    _run(args, body)
    print(f"{args.user} now follows you; share folders with `pluto share PATH {args.user}`")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    """Reject a follow request."""
    home = Home(home_path(args.home))
    with home_lock.hold(home, "reject", name=home_lock.SOCIAL_LOCK):
        state = social.SocialState.load(home)
        social.reject(state, args.user)
        state.save(home)
    print(f"rejected {args.user}'s request")
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    """Share a folder with a follower."""
    home = Home(home_path(args.home))
    path = _volume_path(home, args.path)
    if path == "/":
        raise HomeError("share a folder inside your volume, not the whole root")

    async def body(volume, state):
        cap, _ = await Tree(volume, volume.keys.root).open_dir(path)
        if not isinstance(cap, WriteCap):
            raise PlutoError(f"{path} is read-only for you; you can only share what you own")
        await social.share(volume, state, cap, split_path(path)[-1], path, args.user, args.write)

    _run(args, body)
    print(f"shared {path} with {args.user} ({'read and write' if args.write else 'read-only'})")
    return 0


def cmd_unshare(args: argparse.Namespace) -> int:
    """Stop sharing a folder with a follower: withdraw it and rotate the folder's keys."""
    home = Home(home_path(args.home))
    path = _volume_path(home, args.path)
    if _mounted(home):
        raise HomeError("unmount first (pluto unmount): re-keying a folder rewrites it, "
                        "and a running mount would publish its own copy over it")
    with home_lock.hold(home, "unshare"):  # the same reason, for a mount that starts meanwhile
        return _unshare(args, home, path)


def _unshare(args: argparse.Namespace, home: Home, path: str) -> int:
    async def body(volume, state):
        await social.withdraw(volume, state, path, args.user)
        parts = split_path(path)
        tree = Tree(volume, volume.keys.root)
        parent, _ = await tree.open_dir("/".join(parts[:-1]))
        assert isinstance(parent, WriteCap)
        new_cap = await social.rotate_folder(volume, parent, parts[-1])
        others = [s for s in state.shares if s["path"] == path]
        for s in others:  # everyone else keeps access, through the new keys
            await social.share(volume, state, new_cap, s["name"], path, s["user"], s["write"])
        return [s["user"] for s in others]

    others = _run(args, body)
    print(f"{args.user} no longer has {path}; its keys were rotated"
          + (f" and re-issued to {', '.join(others)}" if others else ""))
    print("note: what they already read cannot be un-read; only what is written from now on is out of reach")
    return 0


def cmd_shares(args: argparse.Namespace) -> int:
    """What you share with whom, and who shares with you (local knowledge)."""
    home = Home(home_path(args.home))
    state = social.SocialState.load(home)
    if args.json:
        print(json.dumps({"username": state.username, "shares": state.shares,
                          "followers": sorted(state.followers), "following": {
                              k: v["status"] for k, v in state.following.items()}}, indent=2))
        return 0
    print(f"you are {state.username or '(no username yet: pluto register NAME)'}")
    for s in state.shares:
        print(f"  {s['path']} -> {s['user']} ({'read-write' if s['write'] else 'read-only'})")
    if not state.shares:
        print("  you share nothing yet")
    print("followers: " + (", ".join(sorted(state.followers)) or "none"))
    print("following: " + (", ".join(f"{k} ({v['status']})" for k, v in sorted(state.following.items())) or "none"))
    return 0


def add_commands(sub: argparse._SubParsersAction, home_help: str) -> None:
    """Register the social commands on the main parser."""
    def cmd(name: str, fn, helptext: str, *positional: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext)
        for arg in positional:
            p.add_argument(arg)
        p.add_argument("--home", metavar="DIR", help=home_help)
        p.set_defaults(func=fn)
        return p

    cmd("register", cmd_register, "claim a username so others can follow you", "username")
    cmd("follow", cmd_follow, "ask to follow a user (a sealed request; the coordinator does not learn who asks)",
        "user")
    cmd("requests", cmd_requests, "read your mailbox: follow requests and shares given to you")
    cmd("accept", cmd_accept, "accept a follow request", "user")
    cmd("reject", cmd_reject, "reject a follow request", "user")
    p = cmd("share", cmd_share, "share a folder with a follower", "path", "user")
    p.add_argument("--write", action="store_true", help="let them change it too")
    cmd("unshare", cmd_unshare, "stop sharing a folder with someone (re-keys the folder)", "path", "user")
    p = cmd("shares", cmd_shares, "list what you share and with whom")
    p.add_argument("--json", action="store_true", help="machine-readable output")
