"""Durable file writes for the fragment store: group-committed directory fsyncs, early writeback.

A fragment is written to a temporary file, fsynced, renamed into place, and
its directory fsynced; these helpers make that sequence cheap when many
uploads commit at once (docs/FORMATS.md, "A storage peer's directory").
"""

from __future__ import annotations

import ctypes
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

IOV_MAX = 1024  # Linux's limit on buffers per writev


class DirSyncer:
    """Group commit of directory fsyncs across concurrent uploads.

    A rename is durable once its directory is fsync'd *after* the rename. A
    caller whose rename is done joins the next batch; one thread (the first
    caller to find no batch running) fsyncs every directory of the batch and
    wakes the others. A caller arriving while a batch runs waits for the
    following one, since the running fsync may have started before its rename.
    An fsync error is raised in every caller of that batch.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[Path] = set()
        self._next = 1  # number of the batch that new callers join
        self._done = 0  # last batch finished
        self._running = False
        self._errors: dict[int, OSError] = {}

    def sync(self, directory: Path) -> None:
        """Return once `directory` was fsync'd after this call began (blocking)."""
        with self._cond:
            self._pending.add(directory)
            mine = self._next
            while self._done < mine:
                if not self._running:
                    break
                self._cond.wait()
            else:
                self._raise_if_failed(mine)
                return
            # Leader: take the batch (which includes ours) and run it outside the lock.
            batch, self._pending = self._pending, set()
            self._running = True
            self._next += 1
        error: OSError | None = None
        try:
            for d in batch:
                try:
                    fsync_dir(d)
                except OSError as exc:
                    error = exc
        finally:
            with self._cond:
                if error is not None:
                    self._errors[mine] = error
                self._done = mine
                self._running = False
                self._cond.notify_all()
        self._raise_if_failed(mine)

    def _raise_if_failed(self, batch: int) -> None:
        error = self._errors.get(batch)
        if error is not None:
            raise error


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, or None where it does not exist (non-Linux)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting for it.

    Purely a performance hint: durability still comes from the fsync before
    the rename. Without it, a whole fragment sits dirty in the page cache
    until that fsync, which then waits for all of it at once.
    """
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def mkstemp_in(directory: Path) -> tuple[int, str]:
    """A new private temporary file in `directory` (fd, path): where an upload is written first."""
    return tempfile.mkstemp(dir=directory, prefix="up-")


def fsync_dir(path: Path) -> None:
    """fsync a directory, which makes the renames and creations inside it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
