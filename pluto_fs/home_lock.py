"""One writer per home: `HOME/lock`, held with flock(2) by a mount and by every command that writes.

Two processes writing one home at once corrupt what it keeps: two mounts
share one journal and one cache (each drops the other's cache files as
stale), and a `pluto put` while mounted publishes the root folder under the
mount, which then publishes its own copy over it. So:

- `pluto mount` and `pluto demo` hold the lock for as long as they run;
  `put`, `check --repair`/`--gc`, `init`, `restore`, `unshare` and `salvage`
  hold it while they run. A second one is refused with one line naming the
  first ("this home is in use by `pluto mount` (pid 4242, mounted on
  /mnt/pluto) ...") and exits 1.
- The social commands (`register`, `follow`, `requests`, `accept`,
  `reject`, `share`) do not touch your own folders, and `share` is meant to
  be run on a folder of the running mount; they take a second lock,
  `HOME/social.lock`, so that two of them never interleave their updates of
  `social.json`. `unshare` re-keys a folder of your tree: it takes both.
- Read-only commands (`ls`, `get`, `status`, `peers`, `shares`, plain
  `check`) take no lock and work while mounted.

The kernel releases a flock when the process holding it ends, however it
ends (kill -9 included), so a lock is never left stale. The file records who
holds it ({pid, command, mountpoint, started}) for the refusal message only;
its content never decides anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pluto_fs.errors import PlutoError
from pluto_fs.home import Home

HOME_LOCK = "lock"
SOCIAL_LOCK = "social.lock"


class HomeInUse(PlutoError):
    """Another pluto process holds this home's lock."""


def _refusal(home: Home, path: Path) -> HomeInUse:
    try:
        info = json.loads(path.read_text())
        where = f", mounted on {info['mountpoint']}" if info.get("mountpoint") else ""
        who = f"`pluto {info['command']}` (pid {info['pid']}{where})"
        mounted = bool(info.get("mountpoint"))
    except (OSError, ValueError, KeyError, TypeError):
        who, mounted = "another pluto command", False  # it has the lock but has not said who it is yet
    advice = "unmount it first" if mounted else "wait for it to finish"
    return HomeInUse(f"this home ({home.path}) is in use by {who}; {advice} or use another --home")


def _open_locked(home: Home, name: str) -> int:
    """A descriptor of the lock file holding its flock; HomeInUse if another process holds it."""
    home.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home.path / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(home, path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def holder(home: Home, name: str = HOME_LOCK) -> dict | None:
    """Who holds the lock right now ({pid, command, mountpoint, started}; {} if not yet known), or None."""
    path = home.path / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def hold(home: Home, command: str, mountpoint: Path | None = None, name: str = HOME_LOCK) -> Iterator[None]:
    """Hold the home's lock for the block; raise HomeInUse (naming the holder) if another process has it.

    The home directory is created (mode 0700) if needed, so `init` and
    `restore` can lock the home they are about to fill.
    """
    fd = _open_locked(home, name)
    try:
        info = {"pid": os.getpid(), "command": command, "mountpoint": str(mountpoint) if mountpoint else None,
                "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only its refusal message is vaguer
        yield
    finally:
        os.close(fd)  # releases the lock


def check_free(home: Home, name: str = HOME_LOCK) -> None:
    """Raise HomeInUse now if another process holds the lock (before starting the process that will hold it)."""
    os.close(_open_locked(home, name))
