"""List every folder of a volume from a fresh process: `python -m tools.checker.probe --home DIR`.

What `pluto ls` does for one folder (Tree.open_dir from the root, over a
new volume and new connections), done for every folder reachable from the
root, printed as JSON:

    {"": {"seq": 7, "entries": {"a": ["dir", 0, "9f…"], …}}, "a": {…}, "a/x": {"error": "…"}}

Each entry is [kind, size, fingerprint of what the entry points to], so two
reads that name the same files but different versions of them differ too.
The final checks run it several times and compare: a folder that reads
differently from one fresh process to the next flips. With `--read` each
folder also gets "read": {name: the file's content as the oracle renders it,
or "error: …"} for every file in it.
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
from pluto_fs.volume.tree import Tree
from pluto_fs.volume.volume import open_volume
from transport.errors import TransportError

from .oracle import render
from .workload import decode

FOLDER_TIMEOUT = 60.0


def fingerprint(entry: DirEntry) -> str:
    """A short hash of what `entry` points to (inline bytes, a manifest reference, a folder's capability)."""
    return hashlib.blake2b(repr(entry.child).encode(), digest_size=8).hexdigest()


async def list_all(home: Home, read: bool = False) -> dict[str, dict]:
    """Every folder reachable from the root: its sequence number and entries, or the error reading it;
    with `read`, every file's content too."""
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
            if read:
                out[path]["read"] = {e.name: await _read(vol, e) for e in directory.entries if e.kind == "file"}
    return out


async def _read(vol, entry: DirEntry) -> str:
    """A file's content as the oracle renders it, or 'error: …'."""
    try:
        with trio.fail_after(FOLDER_TIMEOUT):
            data = await vol.read_all(entry.child, entry.size)
    except (PlutoError, TransportError, CryptreeError, trio.TooSlowError) as exc:
        return f"error: {type(exc).__name__}: {exc}"
    state = decode(data)
    return render(state) if state is not None else f"error: {len(data)} bytes that are no checker content"


def main(argv: list[str] | None = None) -> int:
    """Print the JSON listing of every folder; exit 0 (per-folder errors are in the JSON), 1 if the
    volume could not be opened at all."""
    parser = argparse.ArgumentParser(prog="python -m tools.checker.probe", description=__doc__.split("\n")[0])
    parser.add_argument("--home", required=True, help="the pluto home to read with")
    parser.add_argument("--read", action="store_true", help="read and decode every file too")
    args = parser.parse_args(argv)
    try:
        listing = trio.run(list_all, Home(Path(args.home)), args.read)
    except (PlutoError, TransportError, CryptreeError) as exc:
        print(f"probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    json.dump(listing, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
