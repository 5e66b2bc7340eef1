"""List every folder of a volume from a fresh process: `python -m tools.checker.probe --home DIR`.

What `pluto ls` does for one folder (Tree.open_dir from the root, over a
new volume and new connections), done for every folder reachable from the
root, printed as JSON:

    {"": {"seq": 7, "entries": {"a": ["dir", 0, "9f…"], …}}, "a": {…}, "a/x": {"error": "…"}}

Each entry is [kind, size, fingerprint of what the entry points to], so two
reads that name the same files but different versions of them differ too.
The final checks run it several times and compare: a folder that reads
differently from one fresh process to the next flips.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import trio

from cryptree.dirnode import DirEntry
from cryptree.errors import CryptreeError
from pluto_fs.errors import PlutoError
from pluto_fs.home import Home
from pluto_fs.tree import Tree
from pluto_fs.volume import open_volume
from transport.errors import TransportError

FOLDER_TIMEOUT = 60.0


def fingerprint(entry: DirEntry) -> str:
    """A short hash of what `entry` points to (inline bytes, a manifest reference, a folder's capability)."""
    return hashlib.blake2b(repr(entry.child).encode(), digest_size=8).hexdigest()


async def list_all(home: Home) -> dict[str, dict]:
    """Every folder reachable from the root: its sequence number and entries, or the error reading it."""
    out: dict[str, dict] = {}
    async with open_volume(home) as vol:
        tree = Tree(vol, vol.keys.root)
        queue = [""]
        while queue:
            path = queue.pop(0)
            try:
                with trio.fail_after(FOLDER_TIMEOUT):
                    _, directory = await tree.open_dir(path)
            except (PlutoError, TransportError, CryptreeError, trio.TooSlowError) as exc:
                out[path] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            entries = {}
            for e in directory.entries:
                entries[e.name] = [e.kind, e.size, fingerprint(e)]
                if e.kind == "dir":
                    queue.append(f"{path}/{e.name}" if path else e.name)
            out[path] = {"seq": directory.seq, "entries": entries}
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the JSON listing of every folder; exit 0 (per-folder errors are in the JSON), 1 if the
    volume could not be opened at all."""
    parser = argparse.ArgumentParser(prog="python -m tools.checker.probe", description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True, help="the pluto home to read with")
    args = parser.parse_args(argv)
    try:
        listing = trio.run(list_all, Home(Path(args.home)))
    except (PlutoError, TransportError, CryptreeError) as exc:
        print(f"probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    json.dump(listing, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
