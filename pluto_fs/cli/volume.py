"""`pluto init`, `restore`, `put`, `get`, `ls`: identity and whole-tree commands."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path

import trio

from cryptree.dirnode import DirLink, Symlink
from cryptree.errors import PhraseError
from cryptree.identity import new_seed, phrase_to_seed, seed_to_phrase
from pluto_fs import home_lock
from pluto_fs.errors import HomeError, NotEnoughPeers, PlutoError
from pluto_fs.home import Home, code_config, home_path
from pluto_fs.store.packs import DEFAULT_K, DEFAULT_N
from pluto_fs.units import format_size
from pluto_fs.volume.social import SocialState, fetch_backup
from pluto_fs.volume.tree import Tree
from pluto_fs.volume.volume import open_volume


class ProgressLine:
    """A one-line progress display on stderr (only when stderr is a terminal)."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.files = 0
        self.bytes = 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def __call__(self, path: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.tty:
            rate = self.bytes / max(time.monotonic() - self.start, 1e-6)
            sys.stderr.write(f"\r{self.verb} {self.files} files, {format_size(self.bytes)} ({format_size(rate)}/s)   ")
            sys.stderr.flush()

    def done(self) -> str:
        if self.tty:
            sys.stderr.write("\r\033[K")
        secs = time.monotonic() - self.start
        return f"{self.verb} {self.files} files, {format_size(self.bytes)} in {secs:.1f} s"


def _home(args: argparse.Namespace) -> Home:
    return Home(home_path(args.home))


def cmd_init(args: argparse.Namespace) -> int:
    """Create a new identity and print its recovery phrase once."""
    home = _home(args)
    seed = new_seed()
    with home_lock.hold(home, "init"):
        home.create(seed, code_config(args.coordinator, args.k, args.n))
    print(f"Created a new pluto identity in {home.path}.")
    print("Your recovery phrase (24 words). Write it down and keep it safe: it is shown only this once,")
    print("and it is the only way to get your files back on a new machine.\n")
    words = seed_to_phrase(seed).split()
    for row in range(0, 24, 6):
        print("   " + "  ".join(f"{row + i + 1:>2}. {w:<9}" for i, w in enumerate(words[row : row + 6])))
    print()
    return 0


def _read_phrase() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Recovery phrase (24 words, hidden): ")
    return sys.stdin.read()


def cmd_restore(args: argparse.Namespace) -> int:
    """Recover an identity from its 24 words and check the tree is reachable."""
    home = _home(args)
    try:
        seed = phrase_to_seed(_read_phrase())
    except PhraseError as exc:
        print(f"pluto: {exc}", file=sys.stderr)
        return 2
    with home_lock.hold(home, "restore"):
        return _restore(home, seed, args)


def _restore(home: Home, seed: bytes, args: argparse.Namespace) -> int:
    home.create(seed, code_config(args.coordinator, args.k, args.n))

    async def check() -> tuple[int, SocialState | None]:
        async with open_volume(home) as vol:
            root = await vol.load_dir(vol.keys.root, missing_ok=True)
            try:
                friends = await fetch_backup(vol)
            except PlutoError as exc:  # the files are back either way: say what is missing, do not fail
                print(f"pluto: warning: {exc}", file=sys.stderr)
                friends = None
            return len(root.entries), friends

    count, friends = trio.run(check)
    if count == 0:
        print(f"Restored the identity into {home.path}, but the network holds no files for it yet.")
    else:
        print(f"Restored the identity into {home.path}: {count} entries in your root folder.")
    if friends is not None:
        friends.save(home)
        print(f"Restored your social state: {len(friends.following)} followed, {len(friends.followers)} "
              f"followers, {len(friends.shares)} shares (see `pluto shares`).")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    """Copy a local folder into the volume."""
    home = _home(args)
    local = Path(args.local)
    if not local.is_dir():
        raise PlutoError(f"{local} is not a folder; `pluto put` copies folders (use the mount for single files)")
    progress = ProgressLine("stored")

    async def run() -> None:
        async with open_volume(home) as vol:
            await Tree(vol, vol.keys.root).upload(local, args.remote, progress)

    with home_lock.hold(home, "put"):  # a running mount would publish its own copy of the folders over ours
        trio.run(run)
    print(progress.done())
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    """Copy a folder of the volume to local disk."""
    home = _home(args)
    progress = ProgressLine("fetched")

    async def run() -> None:
        async with open_volume(home) as vol:
            await Tree(vol, vol.keys.root).download(args.remote, Path(args.local), progress)

    trio.run(run)
    print(progress.done())
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """List a folder of the volume."""
    home = _home(args)

    async def run() -> None:
        async with open_volume(home) as vol:
            _, directory = await Tree(vol, vol.keys.root).open_dir(args.remote)
            for e in directory.entries:
                kind = "d" if isinstance(e.child, DirLink) else "l" if isinstance(e.child, Symlink) else "-"
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime_ns / 1e9))
                print(f"{kind}{e.mode:04o} {e.size:>12} {when} {e.name!r}" if "\n" in e.name else
                      f"{kind}{e.mode:04o} {e.size:>12} {when} {e.name}")

    trio.run(run)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Audit (and with --repair, fix) everything under a folder."""
    import json as _json

    from pluto_fs.volume.health import check

    home = _home(args)

    def say(msg: str) -> None:
        if sys.stderr.isatty() and not args.json:
            sys.stderr.write("\r" + msg + "   ")
            sys.stderr.flush()

    # --now: the person at the keyboard knows the peer is gone (or accepts the traffic);
    # by default a hand-run repair waits for offline peers like the background one does.
    grace = 0.0 if args.now else home.config().repair_grace

    async def run():
        async with open_volume(home) as vol:
            cap, _ = await Tree(vol, vol.keys.root).open_dir(args.path)
            return await check(vol, cap, repair=args.repair, gc=args.gc, gc_min_age=args.gc_min_age, progress=say,
                               grace=grace)

    if args.repair or args.gc:  # they rewrite what is stored and the local pack log
        with home_lock.hold(home, "check --repair" if args.repair else "check --gc"):
            report = trio.run(run)
    else:
        report = trio.run(run)
    if sys.stderr.isatty() and not args.json:
        sys.stderr.write("\r\033[K")
    if args.json:
        print(_json.dumps(report.__dict__, indent=2))
    else:
        print(f"checked {report.folders} folders, {report.files} files, {report.packs} packs "
              f"({report.fragments_checked} fragments challenged, {report.fragments_failed} failed)")
        print(f"degraded packs: {report.packs_degraded}, unreadable: {report.packs_unreadable}")
        if report.packs_waiting:
            print(f"{report.packs_waiting} packs have fragments on peers offline for less than the repair grace "
                  f"({grace / 3600:g} h): not repaired yet (`pluto check --repair --now` repairs them at once)")
        if report.packs_short and not args.repair:
            print(f"{report.packs_short} packs have a fragment column no peer holds: `pluto check --repair` "
                  "places it (a running mount does so by itself)")
        if args.repair:
            print(f"repaired {report.packs_repaired} packs ({report.fragments_rebuilt} fragments rebuilt), "
                  f"{report.slots_rewritten} slots re-replicated")
            if report.not_fixed:
                print(f"NOT fixed: {len(report.not_fixed)} packs still miss a fragment column:")
            for entry in report.not_fixed:  # every one: a person has to see each pack at risk
                columns = ", ".join(str(c) for c in entry["columns"])
                print(f"  pack {entry['pack'][:16]} ({entry['file'] or 'no file found'}): "
                      f"column{'s' if len(entry['columns']) > 1 else ''} {columns} not placed: {entry['reason']}")
        if args.gc:
            print(f"garbage collected {report.packs_collected} unreferenced packs")
        for problem in report.problems[:10]:
            print(f"problem: {problem}")
    healthy = report.packs_unreadable == 0 and (args.repair or report.packs_degraded == 0)
    return 0 if healthy and not report.problems and not report.not_fixed else 1


def add_commands(sub: argparse._SubParsersAction, coordinator_type, home_help: str) -> None:
    """Register the volume commands on the main parser."""
    for name, fn, helptext in [
        ("init", cmd_init, "create a new identity and show its 24-word recovery phrase"),
        ("restore", cmd_restore, "recover your identity and files from the 24 words (read from stdin or a prompt)"),
    ]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--home", metavar="DIR", help=home_help)
        p.add_argument("--coordinator", required=True, type=coordinator_type, metavar="HOST:PORT")
        p.add_argument("--k", type=int, default=DEFAULT_K, help=f"fragments needed to read (default {DEFAULT_K})")
        p.add_argument("--n", type=int, default=DEFAULT_N, help=f"fragments stored per segment (default {DEFAULT_N})")
        p.set_defaults(func=fn)
    p = sub.add_parser("put", help="copy a local folder into your pluto volume")
    p.add_argument("local", metavar="LOCAL_DIR")
    p.add_argument("remote", nargs="?", default="/", metavar="REMOTE_DIR")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.set_defaults(func=cmd_put)
    p = sub.add_parser("get", help="copy a folder of your pluto volume to local disk")
    p.add_argument("remote", metavar="REMOTE_DIR")
    p.add_argument("local", metavar="LOCAL_DIR")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.set_defaults(func=cmd_get)
    p = sub.add_parser("check", help="audit your data on the peers; --repair rebuilds what is degraded")
    p.add_argument("path", nargs="?", default="/", metavar="REMOTE_DIR")
    p.add_argument("--repair", action="store_true", help="rebuild missing fragments on new peers")
    p.add_argument("--now", "--ignore-grace", dest="now", action="store_true",
                   help="treat peers that are offline but within the repair grace (config repair_grace) as lost: "
                        "with --repair, rebuild their fragments now")
    p.add_argument("--gc", action="store_true", help="delete packs that no file uses any more")
    p.add_argument("--gc-min-age", type=float, default=3600.0, metavar="SECONDS",
                   help="only collect packs older than this "
                        "(default 3600: a running mount may not have published them yet)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("ls", help="list a folder of your pluto volume")
    p.add_argument("remote", nargs="?", default="/", metavar="REMOTE_DIR")
    p.add_argument("--home", metavar="DIR", help=home_help)
    p.set_defaults(func=cmd_ls)


__all__ = ["HomeError", "NotEnoughPeers", "add_commands"]
