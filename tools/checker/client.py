"""Run one planned operation through a mount and tell the oracle what it did, saw and had acknowledged.

Every system call goes through a descriptor of the mount's root opened for
the current mount process (the `*at` calls): after a kill -9 of the mount
they fail with ENOTCONN instead of reaching the empty directory under the
mountpoint, where a create would "succeed" on the local disk.

Bookkeeping rules (the checker must not be flaky about its own records):
- every state an operation may produce goes to the oracle *before* the
  system call that may produce it (`begin`);
- an acknowledgement is recorded only after fsync returned 0, and then
  exactly for the state that fsync covered (what was written through that
  descriptor, or read back from it just before);
- an operation that raised is uncertain: its possible results are added to
  the mount's view, never acknowledged.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from .history import Finding, History
from .oracle import ABSENT, DIR, Oracle, State, render
from .workload import Namespace, Op, ancestors, decode, segment, split


@dataclass
class Outcome:
    """What one operation did, as the history records it."""

    ok: bool = True
    error: str = ""
    errno: int = 0
    acked: list[str] = field(default_factory=list)  # "path=state" per acknowledgement
    seen: list[str] = field(default_factory=list)  # "path=state" per observation


class Client:
    """Runs the operations of one mount."""

    def __init__(self, mount: int, oracle: Oracle, history: History) -> None:
        self.mount = mount
        self.ns = Namespace(mount)
        self.oracle = oracle
        self.history = history
        self.root_fd: int | None = None

    def attach(self, root_fd: int | None) -> None:
        """Use `root_fd` (a descriptor of the mount's root for the running mount process) from now on."""
        if self.root_fd is not None:
            try:
                os.close(self.root_fd)
            except OSError:
                pass  # the mount it belonged to is gone
        self.root_fd = root_fd

    # ---- running ----------------------------------------------------------------------

    def run(self, op: Op) -> Outcome:
        """Run `op`, update the oracle, record it in the history, and return the outcome."""
        t0 = self.history.now()
        out = Outcome()
        try:
            getattr(self, "_" + op.kind)(op, out)
        except OSError as exc:
            out.ok, out.errno = False, exc.errno or 0
            out.error = errno.errorcode.get(exc.errno or 0, "") or str(exc)
        self.history.record("op", id=op.id, mount=op.mount, kind=op.kind, path=op.path, dest=op.dest,
                            what=op.describe(), t0=round(t0, 3), ok=out.ok, error=out.error,
                            acked=out.acked, seen=out.seen)
        return out

    # ---- helpers ----------------------------------------------------------------------

    def _open(self, path: str, flags: int, mode: int = 0o644) -> int:
        assert self.root_fd is not None, "run() before attach()"
        return os.open(path or ".", flags, mode, dir_fd=self.root_fd)

    def _read_state(self, op: Op, out: Outcome, fd: int, path: str) -> State | None:
        """Read the whole file behind `fd` and observe its state; None (and a finding) if corrupt."""
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        state = decode(data)
        if state is None:
            self.history.find(Finding("corrupt", path, "content made of checker segments",
                                      f"{len(data)} bytes that are not", f"op {op.id} read it through the mount"))
            return None
        self._see(op, out, path, state)
        return state

    def _see(self, op: Op, out: Outcome, path: str, state: State) -> None:
        if path in self.oracle.view:
            self.oracle.observe(op.id, path, state)
            out.seen.append(f"{path}={render(state)}")

    def _absent_if_enoent(self, op: Op, out: Outcome, path: str, exc: OSError) -> None:
        """ENOENT from a lookup says the path is not there (a folder above it may be missing too)."""
        if exc.errno == errno.ENOENT:
            self._see(op, out, path, ABSENT)

    def _ack(self, op: Op, out: Outcome, path: str, state: State) -> None:
        self.oracle.ack(op.id, path, state)
        out.acked.append(f"{path}={render(state)}")

    def _ack_present(self, op: Op, out: Outcome, path: str) -> None:
        if path in self.oracle.durable:
            self.oracle.ack_present(op.id, path)
            out.acked.append(f"{path}=present")

    def _ack_ancestors(self, op: Op, out: Outcome, path: str) -> None:
        """fsync publishes every changed folder up to the root: the folders above `path` exist."""
        for folder in ancestors(path):
            if folder:
                self._ack_present(op, out, folder)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    # ---- operations ---------------------------------------------------------------------

    def _write(self, op: Op, out: Outcome) -> None:
        content: State = (op.id,)
        possible: set[State] = {(), content}
        self.oracle.begin(op.path, possible)
        final = content
        try:
            fd = self._open(op.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                self._write_all(fd, segment(op.id, op.size))
                if op.fsync:
                    os.fsync(fd)
                    self._ack(op, out, op.path, content)
                    self._ack_ancestors(op, out, op.path)
                    possible = {content}
                    if op.extra:
                        final = (op.id, op.id + "+")
                        possible.add(final)
                        self.oracle.begin(op.path, {final})
                        self._write_all(fd, segment(op.id + "+", op.extra))
            finally:
                os.close(fd)
        except OSError:
            self.oracle.end(op.path, possible, ok=False)
            raise
        self.oracle.end(op.path, {final}, ok=True)

    def _append(self, op: Op, out: Outcome) -> None:
        try:
            fd = self._open(op.path, os.O_RDWR)
        except OSError as exc:
            self._absent_if_enoent(op, out, op.path, exc)
            raise
        began: State | None = None
        try:
            try:
                base = self._read_state(op, out, fd, op.path)
                if base is None:
                    raise OSError(errno.EBADMSG, "the file's content is not the checker's")
                began = (*base, op.id)
                self.oracle.begin(op.path, {began})
                data = segment(op.id, op.size)
                os.lseek(fd, 0, os.SEEK_END)
                self._write_all(fd, data)
                if op.fsync:
                    os.fsync(fd)
                    self._ack(op, out, op.path, began)
                    self._ack_ancestors(op, out, op.path)
            finally:
                os.close(fd)
        except OSError:
            if began is not None:
                self.oracle.end(op.path, {began}, ok=False)
            raise
        self.oracle.end(op.path, {began}, ok=True)

    def _rename(self, op: Op, out: Outcome) -> None:
        carried = self.oracle.moved(op.path)
        self.oracle.begin(op.path, {ABSENT})
        self.oracle.begin(op.dest, carried)
        before = {s for s in self.oracle.view_of(op.path) if s != ABSENT}
        try:
            os.rename(op.path, op.dest, src_dir_fd=self.root_fd, dst_dir_fd=self.root_fd)
        except OSError:
            self.oracle.end(op.path, {ABSENT}, ok=False)
            self.oracle.end(op.dest, before, ok=False)
            raise
        self.oracle.observe_listed(op.id, op.path, listed=True)  # it was there to be renamed
        moved = self.oracle.view_of(op.path)
        self.oracle.end(op.path, {ABSENT}, ok=True)
        self.oracle.end(op.dest, moved, ok=True)

    def _unlink(self, op: Op, out: Outcome) -> None:
        self.oracle.begin(op.path, {ABSENT})
        try:
            os.unlink(op.path, dir_fd=self.root_fd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self._see(op, out, op.path, ABSENT)
            else:
                self.oracle.end(op.path, {ABSENT}, ok=False)
            raise
        self.oracle.observe_listed(op.id, op.path, listed=True)
        self.oracle.end(op.path, {ABSENT}, ok=True)

    def _mkdir(self, op: Op, out: Outcome) -> None:
        self.oracle.begin(op.path, {DIR})
        try:
            os.mkdir(op.path, 0o755, dir_fd=self.root_fd)
        except OSError:
            self.oracle.end(op.path, {DIR}, ok=False)
            raise
        self._see(op, out, op.path, ABSENT)  # mkdir succeeds only where nothing was
        self.oracle.end(op.path, {DIR}, ok=True)
        for child in self.ns.names_in(op.path):  # ...and makes an empty folder
            self._see(op, out, child, ABSENT)

    def _rmdir(self, op: Op, out: Outcome) -> None:
        self.oracle.begin(op.path, {ABSENT})
        try:
            os.rmdir(op.path, dir_fd=self.root_fd)
        except OSError:
            self.oracle.end(op.path, {ABSENT}, ok=False)
            raise
        self._see(op, out, op.path, DIR)
        for child in self.ns.names_in(op.path):  # rmdir succeeds only on an empty folder
            self._see(op, out, child, ABSENT)
        self.oracle.end(op.path, {ABSENT}, ok=True)

    def _fsync_file(self, op: Op, out: Outcome) -> None:
        try:
            fd = self._open(op.path, os.O_RDONLY)
        except OSError as exc:
            self._absent_if_enoent(op, out, op.path, exc)
            raise
        try:
            state = self._read_state(op, out, fd, op.path)
            os.fsync(fd)
            if state is not None:
                self._ack(op, out, op.path, state)
                self._ack_ancestors(op, out, op.path)
        finally:
            os.close(fd)

    def _read(self, op: Op, out: Outcome) -> None:
        try:
            fd = self._open(op.path, os.O_RDONLY)
        except OSError as exc:
            self._absent_if_enoent(op, out, op.path, exc)
            raise
        try:
            self._read_state(op, out, fd, op.path)
        finally:
            os.close(fd)

    def _listing(self, op: Op, out: Outcome) -> tuple[int, set[str]]:
        """Open the folder `op.path` and list it; observe the folder and this mount's names in it."""
        try:
            fd = self._open(op.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            self._absent_if_enoent(op, out, op.path, exc)
            raise
        try:
            names = set(os.listdir(fd))
        except OSError:
            os.close(fd)
            raise
        if op.path:
            self._see(op, out, op.path, DIR)
        for child in self.ns.names_in(op.path):
            listed = split(child)[1] in names
            self.oracle.observe_listed(op.id, child, listed)
            out.seen.append(f"{child}={'listed' if listed else 'absent'}")
        return fd, names

    def _list(self, op: Op, out: Outcome) -> None:
        fd, _ = self._listing(op, out)
        os.close(fd)

    def _fsync_dir(self, op: Op, out: Outcome) -> None:
        fd, names = self._listing(op, out)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # POSIX: fsync of a folder makes its entries durable. These names are this mount's
        # alone, and this thread is their only writer, so the listing is still current.
        for child in self.ns.names_in(op.path):
            if split(child)[1] in names:
                self._ack_present(op, out, child)
            else:
                self._ack(op, out, child, ABSENT)
        if op.path:
            self._ack_present(op, out, op.path)
            self._ack_ancestors(op, out, op.path)
