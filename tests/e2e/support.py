"""Small helpers shared by the end-to-end tests: the CLI, durable writes, a second device, peer states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptree.identity import seed_to_phrase
from pluto_fs.grid.localgrid import LocalGrid, child_env
from pluto_fs.home import Home

T = TypeVar("T")


def pluto(home: Home, *args: str, ok: bool = True, stdin: str | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `pluto ARGS --home HOME` in a fresh process; with `ok`, insist on exit 0."""
    res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", *args, "--home", str(home.path)],
                         input=stdin, capture_output=True, text=True, timeout=timeout, env=child_env())
    if ok:
        assert res.returncode == 0, f"pluto {' '.join(args)} exited {res.returncode}: {res.stderr}"
    return res


def ls(home: Home, remote: str = "/") -> list[str]:
    """The names `pluto ls REMOTE` prints, in its order (a fresh process: nothing cached)."""
    return [line.split(None, 4)[4] for line in pluto(home, "ls", remote).stdout.splitlines()]


def write_durably(path: Path, data: bytes) -> None:
    """Create or replace `path` with `data` and fsync it: an acknowledged write, or OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync(2) of a folder: its names are acknowledged once this returns."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_home(home: Home, grid: LocalGrid, where: Path, says: str | None = None) -> Home:
    """A second device: `pluto restore` into a new home from `home`'s 24 words (its output must hold `says`)."""
    new = Home(where)
    res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", "restore", "--home", str(new.path),
                          "--coordinator", grid.coordinator.address],
                         input=seed_to_phrase(home.identity_path.read_bytes()), capture_output=True, text=True,
                         timeout=120, env=child_env())
    assert res.returncode == 0, res.stderr
    assert says is None or says in res.stdout, res.stdout
    return new


def peer_alive(home: Home) -> dict[str, bool]:
    """Peer address -> whether the coordinator lists it alive (`pluto peers --json`)."""
    return {p["address"]: p["alive"] for p in json.loads(pluto(home, "peers", "--json").stdout)}


def wait_until(check: Callable[[], T], seconds: float = 30.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (or give up with an AssertionError)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {seconds:g} s")
        time.sleep(0.2)


def wait_listed_offline(home: Home, grid: LocalGrid, indices: list[int]) -> None:
    """Until the coordinator lists storage peers `indices` as not alive."""
    addresses = [grid.storage[i].address for i in indices]
    wait_until(lambda: not any(peer_alive(home).get(a, True) for a in addresses), what="peers listed offline")
