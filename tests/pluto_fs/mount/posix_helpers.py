"""Helpers for the POSIX behaviour suite (test_posix.py).

Everything here works on any directory, so the suite can be checked against
the kernel's own filesystems (PLUTO_FS_UNDER_TEST=local) and then run
unchanged against the pluto FUSE mount.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import pickle
import random
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

NOBODY = 65534

# Fixed, nanosecond-precise times so that "preserved exactly" means something.
T_FILE = 1_600_000_000_123_456_789
T_DIR = 1_500_000_000_987_654_321
T_LINK = 1_400_000_000_000_000_001


def errname(code: int | None) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "None"


@contextmanager
def raises_errno(*expected: int) -> Iterator[pytest.ExceptionInfo[OSError]]:
    """Assert that the block raises OSError with one of exactly these errnos."""
    with pytest.raises(OSError) as info:
        yield info
    got = info.value.errno
    assert got in expected, (
        f"expected errno {'/'.join(errname(e) for e in expected)}, got {errname(got)}: {info.value!r}")


def write_file(path: Path | str, data: bytes, mode: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def read_file(path: Path | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pread_all(fd: int, size: int, offset: int = 0) -> bytes:
    """pread until `size` bytes or EOF (a short read is legal, so loop)."""
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def user_xattrs(path: Path | str, follow_symlinks: bool = True) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=follow_symlinks)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=follow_symlinks) for n in sorted(names) if n.startswith("user.")}


# ------------------------------------------------------------ run as another user


def run_as(uid: int | None, gid: int | None, fn: Callable[[], Any]) -> tuple[str, Any]:
    """Run `fn` in a forked child that dropped to uid/gid (no supplementary groups).

    With uid and gid None the child keeps the parent's identity (another process, same user).

    Returns ("ok", value) or ("errno", errno) if fn raised OSError, or
    ("error", repr) for anything else. The child always leaves with os._exit.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            try:
                if uid is not None:
                    os.setgroups([])
                    os.setgid(gid)
                    os.setuid(uid)
                result: tuple[str, Any] = ("ok", fn())
            except OSError as e:
                result = ("errno", e.errno)
            except BaseException as e:
                result = ("error", repr(e))
            data = pickle.dumps(result)
            while data:
                data = data[os.write(w, data):]
            os.close(w)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert chunks, "child process sent no result"
    return pickle.loads(b"".join(chunks))


# ------------------------------------------------------------ utimensat with UTIME_OMIT

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _ts(value_ns: int) -> _Timespec:
    if value_ns in (UTIME_NOW, UTIME_OMIT):
        return _Timespec(0, value_ns)
    sec, nsec = divmod(value_ns, 1_000_000_000)
    return _Timespec(sec, nsec)


def utimensat(path: Path | str, atime_ns: int, mtime_ns: int, follow_symlinks: bool = True) -> None:
    """utimensat(2) with UTIME_NOW / UTIME_OMIT support (os.utime has neither)."""
    times = (_Timespec * 2)(_ts(atime_ns), _ts(mtime_ns))
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


# ------------------------------------------------------------ raw readdir (keeps . and ..)


class _Dirent64(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir64.restype = ctypes.POINTER(_Dirent64)
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]


def raw_readdir(path: Path | str) -> list[bytes]:
    """Every name readdir(3) returns, '.' and '..' included if the filesystem returns them."""
    d = _libc.opendir(os.fsencode(path))
    if not d:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    names = []
    try:
        while True:
            ctypes.set_errno(0)
            ent = _libc.readdir64(d)
            if not ent:
                e = ctypes.get_errno()
                if e:
                    raise OSError(e, os.strerror(e), str(path))
                return names
            names.append(ent.contents.d_name)
    finally:
        _libc.closedir(d)


# ------------------------------------------------------------ trees for cp / tar / rsync / git

TREE_FILES: dict[str, tuple[bytes, int]] = {
    "empty.txt": (b"", 0o644),
    "small.txt": (b"hello, pluto\n", 0o600),
    "exec.sh": (b"#!/bin/sh\necho hi\n", 0o755),
    "readonly.txt": (b"do not touch\n", 0o444),
    "with space & 'quotes' \"double\".txt": (b"spaces\n", 0o644),
    "naïve-日本語-🦊.md": (b"# unicode\n", 0o644),
    "line\nbreak.txt": (b"newline in the name\n", 0o640),
    "sub/nested/deep.txt": (b"deep\n" * 100, 0o644),
    "sub/backslash\\name": (b"bs\n", 0o644),
}
TREE_LINKS: dict[str, str] = {
    "sub/link-rel": "../small.txt",
    "sub/link-dir": "nested",
    "sub/dangling": "does/not/exist",
    "link-unicode": "naïve-日本語-🦊.md",
}
TREE_DIR_MODES = {"sub": 0o750, "sub/nested": 0o700}


def make_source_tree(root: Path, *, empty_dir: bool = True, owners: bool = True, xattrs: bool = True) -> Path:
    """A small tree with every kind of entry a copy tool must preserve, with ns-precise times."""
    rng = random.Random(42)
    root.mkdir(parents=True)
    for rel in TREE_DIR_MODES:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, (data, mode) in TREE_FILES.items():
        write_file(root / rel, data, mode)
    write_file(root / "random.bin", rng.randbytes(300 * 1024 + 7), 0o644)
    for rel, target in TREE_LINKS.items():
        os.symlink(target, root / rel)
    if empty_dir:
        (root / "emptydir").mkdir()
    if owners:
        write_file(root / "owned.txt", b"owned by someone else\n", 0o664)
        os.chown(root / "owned.txt", 1234, 5678)
        os.lchown(root / "sub/link-rel", 1234, 5678)
    if xattrs:
        write_file(root / "xattr.txt", b"has xattrs\n", 0o644)
        os.setxattr(root / "xattr.txt", "user.comment", b"hello")
        os.setxattr(root / "xattr.txt", "user.binary", bytes(range(256)))
    for rel, mode in TREE_DIR_MODES.items():
        os.chmod(root / rel, mode)
    # Times last, deepest first, so that creating entries does not move a directory's mtime again.
    entries = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for i, p in enumerate(entries):
        if p.is_symlink():
            os.utime(p, ns=(T_LINK, T_LINK + i), follow_symlinks=False)
        elif p.is_dir():
            os.utime(p, ns=(T_DIR, T_DIR + i))
        else:
            os.utime(p, ns=(T_FILE, T_FILE + i))
    return root


def snapshot(root: Path, *, owners: bool = True, times: bool = True, xattrs: bool = True,
             modes: bool = True, dir_times: bool = True) -> dict[str, tuple]:
    """Everything about a tree that cp -a / tar -p / rsync -a must preserve, keyed by relative path."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                kind, body = "link", os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                kind, body = "dir", None
            else:
                kind, body = "file", hashlib.sha256(read_file(p)).hexdigest()
            rec = [kind, body, st.st_size if kind != "dir" else None]
            if modes and kind != "link":
                rec.append(oct(stat.S_IMODE(st.st_mode)))
            if owners:
                rec.append((st.st_uid, st.st_gid))
            if times and (kind != "dir" or dir_times):
                rec.append(st.st_mtime_ns)
            if xattrs and kind != "link":
                rec.append(user_xattrs(p))
            out[rel] = tuple(rec)
    return out


def diff_r(a: Path, b: Path, *extra: str) -> None:
    """`diff -r` that compares symlinks by target; fails the test with its output."""
    res = subprocess.run(["diff", "-r", "--no-dereference", *extra, str(a), str(b)],
                         capture_output=True, text=True, errors="replace")
    assert res.returncode == 0, f"diff -r {a} {b}:\n{res.stdout}{res.stderr}"


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, errors="replace")
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}{res.stderr}"
    return res.stdout


def py_rsync(src: Path, dst: Path) -> None:
    """What `rsync -a --numeric-ids -X` does on the receiving side, in Python.

    For each changed file: write a temporary `.name.XXXXXX` beside the
    destination, set its mode, owner, xattrs and times, then rename it over
    the destination. Symlinks the same way. Directory times last.
    """
    dst.mkdir(exist_ok=True)
    dirs: list[tuple[Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        sdir = Path(dirpath)
        ddir = dst / os.path.relpath(sdir, src)
        sst = os.lstat(sdir)
        if not ddir.is_dir():
            ddir.mkdir()
        os.chown(ddir, sst.st_uid, sst.st_gid)
        os.chmod(ddir, stat.S_IMODE(sst.st_mode) | 0o700)  # writable while we fill it
        dirs.append((ddir, sst))
        for name in filenames + [d for d in dirnames if (sdir / d).is_symlink()]:
            s, d = sdir / name, ddir / name
            st = os.lstat(s)
            try:
                old = os.lstat(d)
                if (old.st_size, old.st_mtime_ns, stat.S_IFMT(old.st_mode)) == (
                        st.st_size, st.st_mtime_ns, stat.S_IFMT(st.st_mode)):
                    continue  # rsync's quick check: same size and mtime, skip
            except FileNotFoundError:
                pass
            tmp = ddir / f".{name[:200]}.{random.randbytes(3).hex()}"
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), tmp)
                os.lchown(tmp, st.st_uid, st.st_gid)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    data = memoryview(read_file(s))
                    while data:
                        data = data[os.write(fd, data):]
                finally:
                    os.close(fd)
                for k, v in user_xattrs(s).items():
                    os.setxattr(tmp, k, v)
                os.chown(tmp, st.st_uid, st.st_gid)
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.rename(tmp, d)
    for ddir, st in reversed(dirs):
        os.chmod(ddir, stat.S_IMODE(st.st_mode))
        os.utime(ddir, ns=(st.st_atime_ns, st.st_mtime_ns))
