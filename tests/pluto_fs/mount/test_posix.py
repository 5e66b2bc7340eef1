"""POSIX behaviour the pluto FUSE driver must have, written against any directory.

Every test works in `fs_dir`, an empty directory on the filesystem under
test. Check the suite itself against the kernel's filesystems with

    PLUTO_FS_UNDER_TEST=local pytest tests/pluto_fs/test_posix.py

and run it against a real pluto mount with the default mode. The errnos are
Linux's exact ones. What a file manager, `cp -a`, `rsync -a`, `tar x`, `git`
and editors do is covered, success path and failure path.

Documented latitude for pluto: hard links may be refused with ENOTSUP (or
EPERM); names that are not UTF-8 may be refused with EILSEQ; a filesystem
that cannot hold files past 4 GiB must say EFBIG. Everything else is exact.

The permission tests fork a child that drops to uid 65534, so the mount must
allow other users (allow_other) and check modes (default_permissions). The
rsync test uses rsync when it is installed, else the same receiver steps in
Python (posix_helpers.py_rsync), which also run on their own in every case.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import random
import shutil
import stat
import subprocess
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from posix_helpers import (
    NOBODY,
    UTIME_OMIT,
    diff_r,
    make_source_tree,
    pread_all,
    py_rsync,
    raises_errno,
    raw_readdir,
    read_file,
    run,
    run_as,
    snapshot,
    user_xattrs,
    utimensat,
    write_file,
)

GiB = 1 << 30
MiB = 1 << 20
# A time with every nanosecond digit in use: "preserved exactly" must mean exactly.
T1 = 1_234_567_890_123_456_789
T2 = 1_300_000_000_987_654_321


def tick() -> None:
    """Let the clock move past the timestamp granularity before the next change."""
    time.sleep(0.03)


@pytest.fixture
def f(fs_dir: Path) -> Path:
    """A regular file holding b"0123456789"."""
    p = fs_dir / "file"
    write_file(p, b"0123456789")
    return p


@pytest.fixture
def d(fs_dir: Path) -> Path:
    """An empty directory."""
    p = fs_dir / "dir"
    p.mkdir()
    return p


# ================================================================= lookup / stat


ENOENT_CASES: dict[str, Callable[[Path], Any]] = {
    "stat": lambda r: os.stat(r / "missing"),
    "lstat": lambda r: os.lstat(r / "missing"),
    "open_rdonly": lambda r: os.open(r / "missing", os.O_RDONLY),
    "open_creat_in_missing_dir": lambda r: os.open(r / "nodir" / "f", os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir_in_missing_dir": lambda r: os.mkdir(r / "nodir" / "sub"),
    "symlink_in_missing_dir": lambda r: os.symlink("t", r / "nodir" / "l"),
    "unlink": lambda r: os.unlink(r / "missing"),
    "rmdir": lambda r: os.rmdir(r / "missing"),
    "rename_source": lambda r: os.rename(r / "missing", r / "other"),
    "chmod": lambda r: os.chmod(r / "missing", 0o644),
    "chown": lambda r: os.chown(r / "missing", 0, 0),
    "utime": lambda r: os.utime(r / "missing", ns=(T1, T1)),
    "truncate": lambda r: os.truncate(r / "missing", 0),
    "readlink": lambda r: os.readlink(r / "missing"),
    "listdir": lambda r: os.listdir(r / "missing"),
    "getxattr": lambda r: os.getxattr(r / "missing", "user.x"),
    "setxattr": lambda r: os.setxattr(r / "missing", "user.x", b"v"),
    "listxattr": lambda r: os.listxattr(r / "missing"),
    "link_source": lambda r: os.link(r / "missing", r / "other"),
}


@pytest.mark.parametrize("op", sorted(ENOENT_CASES))
def test_missing_path_gives_enoent(fs_dir: Path, op: str) -> None:
    with raises_errno(errno.ENOENT):
        ENOENT_CASES[op](fs_dir)
    assert os.listdir(fs_dir) == []  # nothing was created on the way


ENOTDIR_CASES: dict[str, Callable[[Path], Any]] = {
    "stat_through_file": lambda f: os.stat(f / "x"),
    "lstat_through_file": lambda f: os.lstat(f / "x"),
    "open_through_file": lambda f: os.open(f / "x", os.O_RDONLY),
    "create_through_file": lambda f: os.open(f / "x", os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir_through_file": lambda f: os.mkdir(f / "x"),
    "symlink_through_file": lambda f: os.symlink("t", f / "x"),
    "unlink_through_file": lambda f: os.unlink(f / "x"),
    "listdir_of_file": lambda f: os.listdir(f),
    "trailing_slash_on_file": lambda f: os.stat(str(f) + "/"),
    "open_file_with_o_directory": lambda f: os.open(f, os.O_RDONLY | os.O_DIRECTORY),
    "rename_into_file": lambda f: os.rename(f, f / "x"),
}


@pytest.mark.parametrize("op", sorted(ENOTDIR_CASES))
def test_path_through_a_file_gives_enotdir(f: Path, op: str) -> None:
    with raises_errno(errno.ENOTDIR):
        ENOTDIR_CASES[op](f)
    assert read_file(f) == b"0123456789"


def test_stat_of_new_file_reports_type_size_owner_and_times(fs_dir: Path) -> None:
    before = time.time_ns()
    write_file(fs_dir / "a", b"x" * 1234)
    after = time.time_ns()
    st = os.stat(fs_dir / "a")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 1234
    assert st.st_nlink == 1
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert st.st_blksize > 0
    for t in (st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns):
        assert before - 2_000_000_000 <= t <= after + 2_000_000_000
    assert st.st_dev == os.stat(fs_dir).st_dev


def test_stat_of_directory_reports_directory(d: Path) -> None:
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode)
    assert not stat.S_ISREG(st.st_mode)


def test_inode_numbers_are_distinct_and_stable(fs_dir: Path) -> None:
    # cp -a, tar, rsync -H, du and find use (st_dev, st_ino) to spot hard links and loops.
    paths = []
    for i in range(50):
        write_file(fs_dir / f"f{i}", b"same content")  # identical content must not share an inode
        paths.append(fs_dir / f"f{i}")
    for i in range(10):
        (fs_dir / f"d{i}").mkdir()
        paths.append(fs_dir / f"d{i}")
    first = [os.lstat(p).st_ino for p in paths]
    assert len(set(first)) == len(paths)
    assert [os.lstat(p).st_ino for p in paths] == first


def test_inode_number_survives_rename(f: Path, d: Path) -> None:
    ino = os.stat(f).st_ino
    os.rename(f, d / "moved")
    assert os.stat(d / "moved").st_ino == ino


def test_dot_and_dotdot_resolve_to_self_and_parent(fs_dir: Path, d: Path) -> None:
    # plain strings: pathlib would silently drop the "." components
    assert os.stat(f"{d}/.").st_ino == os.stat(d).st_ino
    assert os.stat(f"{d}/..").st_ino == os.stat(fs_dir).st_ino
    assert os.stat(f"{fs_dir}/dir/./../dir/.").st_ino == os.stat(d).st_ino


def test_deep_nesting_64_levels(fs_dir: Path) -> None:
    p = fs_dir
    for i in range(64):
        p = p / f"level{i}"
    os.makedirs(p)
    write_file(p / "bottom.txt", b"deep")
    assert read_file(p / "bottom.txt") == b"deep"
    assert sum(1 for _ in os.walk(fs_dir)) == 65


# ================================================================= open flags


def test_o_creat_creates_with_mode_masked_by_umask(fs_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        os.close(os.open(fs_dir / "a", os.O_WRONLY | os.O_CREAT, 0o777))
        os.close(os.open(fs_dir / "b", os.O_WRONLY | os.O_CREAT, 0o640))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fs_dir / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(fs_dir / "b").st_mode) == 0o640
    assert os.stat(fs_dir / "a").st_size == 0


def test_o_creat_without_excl_opens_existing_untouched(f: Path) -> None:
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert os.read(fd, 100) == b"0123456789"
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o644


def test_o_creat_o_excl_on_existing_file_is_eexist(f: Path) -> None:
    with raises_errno(errno.EEXIST):
        os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert read_file(f) == b"0123456789"


def test_o_creat_o_excl_on_existing_directory_is_eexist(d: Path) -> None:
    with raises_errno(errno.EEXIST):
        os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)


def test_o_creat_o_excl_on_dangling_symlink_is_eexist(fs_dir: Path) -> None:
    os.symlink("nowhere", fs_dir / "l")
    with raises_errno(errno.EEXIST):
        os.open(fs_dir / "l", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert not (fs_dir / "nowhere").exists()


def test_o_creat_through_dangling_symlink_creates_target(fs_dir: Path) -> None:
    os.symlink("target", fs_dir / "l")
    fd = os.open(fs_dir / "l", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"via link")
    os.close(fd)
    assert read_file(fs_dir / "target") == b"via link"
    assert os.readlink(fs_dir / "l") == "target"


def test_mknod_regular_file_creates_empty_file(fs_dir: Path) -> None:
    # GNU tar --xattrs creates a file with mknod(S_IFREG), sets its xattrs, then opens it to write.
    os.mknod(fs_dir / "n", stat.S_IFREG | 0o640)
    st = os.stat(fs_dir / "n")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert stat.S_IMODE(st.st_mode) == 0o640 & ~_umask()
    os.setxattr(fs_dir / "n", "user.k", b"v")
    write_file(fs_dir / "n", b"data")
    assert read_file(fs_dir / "n") == b"data"
    with raises_errno(errno.EEXIST):
        os.mknod(fs_dir / "n", stat.S_IFREG | 0o640)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_lockfile_pattern_o_excl_then_rename(fs_dir: Path) -> None:
    # git's index.lock / refs lock: create exclusively, write, rename into place.
    lock = fs_dir / "index.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with raises_errno(errno.EEXIST):
        os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"new index")
    os.close(fd)
    os.rename(lock, fs_dir / "index")
    assert read_file(fs_dir / "index") == b"new index"
    os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))  # free again
    assert sorted(os.listdir(fs_dir)) == ["index", "index.lock"]


def test_o_trunc_empties_existing_file(f: Path) -> None:
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"ab")
    finally:
        os.close(fd)
    assert read_file(f) == b"ab"


def test_o_trunc_updates_mtime(f: Path) -> None:
    os.utime(f, ns=(T1, T1))
    os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
    assert os.stat(f).st_mtime_ns > T1


def test_o_append_writes_at_end_even_after_seek(f: Path) -> None:
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"AB")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 12
    finally:
        os.close(fd)
    assert read_file(f) == b"0123456789AB"


def test_o_append_from_two_descriptors_never_overwrites(fs_dir: Path) -> None:
    p = fs_dir / "log"
    a = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(20):
            os.write(a if i % 2 == 0 else b, b"%02d\n" % i)
    finally:
        os.close(a)
        os.close(b)
    assert read_file(p) == b"".join(b"%02d\n" % i for i in range(20))


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_CREAT, os.O_RDWR | os.O_TRUNC],
                         ids=["wronly", "rdwr", "wronly_creat", "rdwr_trunc"])
def test_opening_directory_for_writing_is_eisdir(d: Path, flags: int) -> None:
    with raises_errno(errno.EISDIR):
        os.open(d, flags, 0o644)


def test_directory_opens_read_only_and_read_is_eisdir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        with raises_errno(errno.EISDIR):
            os.read(fd, 10)
    finally:
        os.close(fd)


def test_o_nofollow_on_symlink_is_eloop(f: Path, fs_dir: Path) -> None:
    os.symlink("file", fs_dir / "l")
    with raises_errno(errno.ELOOP):
        os.open(fs_dir / "l", os.O_RDONLY | os.O_NOFOLLOW)


def test_write_on_read_only_descriptor_is_ebadf(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        with raises_errno(errno.EBADF):
            os.write(fd, b"x")
    finally:
        os.close(fd)


def test_read_on_write_only_descriptor_is_ebadf(f: Path) -> None:
    fd = os.open(f, os.O_WRONLY)
    try:
        with raises_errno(errno.EBADF):
            os.read(fd, 1)
    finally:
        os.close(fd)


# ================================================================= read / write


def test_write_then_read_back_after_reopen(fs_dir: Path) -> None:
    data = os.urandom(8 * MiB + 13)  # several chunks, not a multiple of anything
    write_file(fs_dir / "big", data)
    assert os.stat(fs_dir / "big").st_size == len(data)
    assert read_file(fs_dir / "big") == data


def test_pread_at_offsets(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(fd, 3, 0) == b"012"
        assert os.pread(fd, 4, 5) == b"5678"
        assert os.pread(fd, 100, 7) == b"789"  # short read at EOF
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # pread does not move the offset
    finally:
        os.close(fd)


def test_pwrite_overwrites_in_the_middle_only(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"ab", 4) == 2
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)
    assert read_file(f) == b"0123ab6789"
    assert os.stat(f).st_size == 10


def test_overwrite_inside_large_file_keeps_the_rest(fs_dir: Path) -> None:
    data = bytearray(os.urandom(4 * MiB))
    write_file(fs_dir / "big", bytes(data))
    patch = os.urandom(100_000)
    fd = os.open(fs_dir / "big", os.O_RDWR)
    try:
        os.pwrite(fd, patch, 1_500_000)
    finally:
        os.close(fd)
    data[1_500_000:1_600_000] = patch
    assert read_file(fs_dir / "big") == bytes(data)


def test_reading_at_or_past_eof_returns_empty(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 10) == b""
        assert os.pread(fd, 10, 1_000_000) == b""
        os.lseek(fd, 0, os.SEEK_END)
        assert os.read(fd, 10) == b""
    finally:
        os.close(fd)


def test_sparse_write_beyond_eof_reads_holes_as_zeros(fs_dir: Path) -> None:
    p = fs_dir / "sparse"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.pwrite(fd, b"tail", 3 * MiB)
        assert os.fstat(fd).st_size == 3 * MiB + 4
        assert pread_all(fd, 3 * MiB + 4) == b"head" + bytes(3 * MiB - 4) + b"tail"
    finally:
        os.close(fd)


def test_seek_past_eof_then_write_fills_gap_with_zeros(f: Path) -> None:
    fd = os.open(f, os.O_WRONLY)
    try:
        assert os.lseek(fd, 100, os.SEEK_SET) == 100
        os.write(fd, b"X")
    finally:
        os.close(fd)
    assert read_file(f) == b"0123456789" + bytes(90) + b"X"


def test_lseek_data_and_hole_are_consistent(f: Path) -> None:
    # cp (coreutils >= 9) probes with SEEK_DATA/SEEK_HOLE; any answer must stay inside the file.
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 10
        with raises_errno(errno.ENXIO):
            os.lseek(fd, 10, os.SEEK_DATA)
    finally:
        os.close(fd)


def test_many_small_writes_accumulate(fs_dir: Path) -> None:
    fd = os.open(fs_dir / "small", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(2000):
            os.write(fd, b"%06d\n" % i)
    finally:
        os.close(fd)
    assert read_file(fs_dir / "small") == b"".join(b"%06d\n" % i for i in range(2000))


def test_write_through_one_descriptor_is_visible_through_another(fs_dir: Path) -> None:
    p = fs_dir / "shared"
    w = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    r = os.open(p, os.O_RDONLY)
    try:
        os.write(w, b"first")
        assert os.pread(r, 100, 0) == b"first"
        os.pwrite(w, b"SECOND", 2)
        assert os.pread(r, 100, 0) == b"fiSECOND"
        assert os.fstat(r).st_size == 8
    finally:
        os.close(w)
        os.close(r)


def test_write_advances_mtime_and_ctime(f: Path) -> None:
    os.utime(f, ns=(T1, T1))
    before = os.stat(f)
    tick()
    fd = os.open(f, os.O_WRONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    after = os.stat(f)
    assert after.st_mtime_ns > T1
    assert after.st_ctime_ns > before.st_ctime_ns


def test_file_growing_and_shrinking_across_small_sizes(fs_dir: Path) -> None:
    # Small files may live inline in directory metadata and big ones in chunks: cross that line both ways.
    p = fs_dir / "shape"
    model = bytearray()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for step, size in enumerate([1, 2047, 2048, 2049, 4096, 100, 70_000, 2048, 0, 3000, 1]):
            if size > len(model):
                extra = bytes([step + 1]) * (size - len(model))
                os.pwrite(fd, extra, len(model))
                model += extra
            else:
                os.ftruncate(fd, size)
                del model[size:]
            assert os.fstat(fd).st_size == size
            assert pread_all(fd, size + 10) == bytes(model)
    finally:
        os.close(fd)
    assert read_file(p) == bytes(model)


def test_random_writes_and_truncates_match_a_model(fs_dir: Path) -> None:
    rng = random.Random(1234)
    p = fs_dir / "model"
    model = bytearray()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(300):
            op = rng.random()
            if op < 0.7:
                off = rng.randrange(0, len(model) + 70_000)
                data = rng.randbytes(rng.choice([1, 17, 4096, rng.randrange(1, 100_000)]))
                os.pwrite(fd, data, off)
                if off > len(model):
                    model += bytes(off - len(model))
                model[off:off + len(data)] = data
            elif op < 0.85:
                size = rng.randrange(0, len(model) + 50_000)
                os.ftruncate(fd, size)
                model = model[:size] + bytes(max(0, size - len(model)))
            else:
                os.fsync(fd)
            if i % 50 == 49:
                assert pread_all(fd, len(model) + 1) == bytes(model), f"content differs after op {i}"
        assert os.fstat(fd).st_size == len(model)
    finally:
        os.close(fd)
    assert read_file(p) == bytes(model)


def test_executable_script_on_the_filesystem_runs(fs_dir: Path) -> None:
    write_file(fs_dir / "hello.sh", b"#!/bin/sh\necho \"hello from $0\"\n", 0o755)
    out = subprocess.run([str(fs_dir / "hello.sh")], capture_output=True, text=True, check=True).stdout
    assert out == f"hello from {fs_dir / 'hello.sh'}\n"


def test_access_reflects_mode_bits_for_root(fs_dir: Path) -> None:
    _need_root()
    write_file(fs_dir / "none", b"", 0o000)
    write_file(fs_dir / "rw", b"", 0o644)
    write_file(fs_dir / "x", b"", 0o744)
    assert os.access(fs_dir / "none", os.R_OK | os.W_OK)  # root reads and writes anything
    assert not os.access(fs_dir / "rw", os.X_OK)  # but executes only what has an x bit
    assert os.access(fs_dir / "x", os.X_OK)
    assert not os.access(fs_dir / "missing", os.F_OK)


def test_posix_fallocate_extends_with_zeros(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 100_000)
        assert os.fstat(fd).st_size == 100_000
        assert pread_all(fd, 100_000) == b"0123456789" + bytes(99_990)
    finally:
        os.close(fd)


def test_shutil_copy2_copies_content_mode_times_and_xattrs(f: Path, fs_dir: Path) -> None:
    os.chmod(f, 0o640)
    os.setxattr(f, "user.tag", b"blue")
    os.utime(f, ns=(T2, T1))
    shutil.copy2(f, fs_dir / "copy")
    st = os.stat(fs_dir / "copy")
    assert read_file(fs_dir / "copy") == b"0123456789"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == T1
    assert os.getxattr(fs_dir / "copy", "user.tag") == b"blue"


# ================================================================= truncate


def test_ftruncate_down_keeps_prefix(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 4)
        assert os.fstat(fd).st_size == 4
    finally:
        os.close(fd)
    assert read_file(f) == b"0123"


def test_ftruncate_up_appends_zeros(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 1000)
    finally:
        os.close(fd)
    assert read_file(f) == b"0123456789" + bytes(990)


def test_truncate_path_down_and_up(f: Path) -> None:
    os.truncate(f, 3)
    assert read_file(f) == b"012"
    os.truncate(f, 6)
    assert read_file(f) == b"012\0\0\0"
    assert os.stat(f).st_size == 6


def test_truncate_down_then_up_never_resurrects_old_bytes(fs_dir: Path) -> None:
    p = fs_dir / "t"
    write_file(p, b"\xff" * (2 * MiB))
    os.truncate(p, 1000)
    os.truncate(p, 2 * MiB)
    assert read_file(p) == b"\xff" * 1000 + bytes(2 * MiB - 1000)


def test_truncate_to_zero_then_write_at_offset(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"Z", 5)
    finally:
        os.close(fd)
    assert read_file(f) == b"\0\0\0\0\0Z"


def test_truncate_updates_mtime_and_ctime(f: Path) -> None:
    os.utime(f, ns=(T1, T1))
    ctime = os.stat(f).st_ctime_ns
    tick()
    os.truncate(f, 2)
    st = os.stat(f)
    assert st.st_mtime_ns > T1
    assert st.st_ctime_ns > ctime


def test_truncate_negative_length_is_einval(f: Path) -> None:
    with raises_errno(errno.EINVAL):
        os.truncate(f, -1)
    assert os.stat(f).st_size == 10


def test_truncate_directory_is_eisdir(d: Path) -> None:
    with raises_errno(errno.EISDIR):
        os.truncate(d, 0)


def test_ftruncate_on_read_only_descriptor_is_einval(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        with raises_errno(errno.EINVAL):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    assert os.stat(f).st_size == 10


def test_st_blocks_of_empty_file_is_zero(fs_dir: Path) -> None:
    os.close(os.open(fs_dir / "e", os.O_WRONLY | os.O_CREAT, 0o644))
    st = os.stat(fs_dir / "e")
    assert (st.st_size, st.st_blocks) == (0, 0)


def test_st_blocks_covers_written_data(fs_dir: Path) -> None:
    write_file(fs_dir / "dense", os.urandom(100_000))
    fd = os.open(fs_dir / "dense", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.stat(fs_dir / "dense")
    assert st.st_size == 100_000
    assert 100_000 <= st.st_blocks * 512 <= 100_000 + MiB


def test_st_blocks_of_truncated_up_file_never_exceeds_its_size(fs_dir: Path) -> None:
    p = fs_dir / "hole"
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))
    os.truncate(p, 64 * MiB)
    st = os.stat(p)
    assert st.st_size == 64 * MiB
    assert 0 <= st.st_blocks * 512 <= 64 * MiB


# ================================================================= chmod / chown


@pytest.mark.parametrize("mode", [0o000, 0o600, 0o644, 0o755, 0o4755, 0o2755, 0o1644, 0o7777])
def test_chmod_file_sets_exact_mode_bits(f: Path, mode: int) -> None:
    os.chmod(f, mode)
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == mode
    assert stat.S_ISREG(st.st_mode)


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o1777, 0o2775, 0o000])
def test_chmod_directory_sets_exact_mode_bits(d: Path, mode: int) -> None:
    os.chmod(d, mode)
    st = os.stat(d)
    assert stat.S_IMODE(st.st_mode) == mode
    assert stat.S_ISDIR(st.st_mode)


def test_fchmod_on_open_descriptor(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_chmod_through_symlink_changes_target(f: Path, fs_dir: Path) -> None:
    os.symlink("file", fs_dir / "l")
    os.chmod(fs_dir / "l", 0o600)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert stat.S_ISLNK(os.lstat(fs_dir / "l").st_mode)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid/gid and dropping to uid 65534 need root")


def test_chown_to_another_uid_and_gid(f: Path) -> None:
    _need_root()
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert read_file(f) == b"0123456789"


def test_chown_minus_one_keeps_that_id(f: Path) -> None:
    _need_root()
    os.chown(f, 1234, 5678)
    os.chown(f, -1, 4321)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 4321)
    os.chown(f, 999, -1)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (999, 4321)


def test_chown_directory(d: Path) -> None:
    _need_root()
    os.chown(d, NOBODY, NOBODY)
    assert (os.stat(d).st_uid, os.stat(d).st_gid) == (NOBODY, NOBODY)


def test_fchown_on_open_descriptor(f: Path) -> None:
    _need_root()
    fd = os.open(f, os.O_RDWR)
    try:
        os.fchown(fd, 42, 43)
        assert (os.fstat(fd).st_uid, os.fstat(fd).st_gid) == (42, 43)
    finally:
        os.close(fd)


def test_lchown_changes_symlink_not_target(f: Path, fs_dir: Path) -> None:
    _need_root()
    os.symlink("file", fs_dir / "l")
    os.lchown(fs_dir / "l", 77, 88)
    assert (os.lstat(fs_dir / "l").st_uid, os.lstat(fs_dir / "l").st_gid) == (77, 88)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (os.geteuid(), os.getegid())


def test_chown_clears_setuid_bit_on_file(f: Path) -> None:
    _need_root()
    os.chmod(f, 0o4755)
    os.chown(f, 1234, 1234)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755


def test_setgid_directory_passes_group_to_new_entries(d: Path) -> None:
    _need_root()
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2775)
    write_file(d / "file", b"x")
    (d / "sub").mkdir()
    assert os.stat(d / "file").st_gid == 4242
    assert os.stat(d / "sub").st_gid == 4242
    assert os.stat(d / "sub").st_mode & stat.S_ISGID


# ================================================================= times


def test_utime_sets_atime_and_mtime_with_nanosecond_precision(f: Path) -> None:
    os.utime(f, ns=(T1, T2))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (T1, T2)


def test_utime_on_directory_is_exact(d: Path) -> None:
    os.utime(d, ns=(T2, T1))
    st = os.stat(d)
    assert (st.st_atime_ns, st.st_mtime_ns) == (T2, T1)


def test_utime_epoch_zero(f: Path) -> None:
    os.utime(f, ns=(0, 0))
    assert (os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns) == (0, 0)


def test_utime_before_the_epoch(f: Path) -> None:
    t = -1_000_000_000 * 86400 * 365 + 500  # 1938, with a nanosecond part
    os.utime(f, ns=(t, t))
    assert os.stat(f).st_mtime_ns == t


def test_utime_none_sets_now(f: Path) -> None:
    os.utime(f, ns=(T1, T1))
    before = time.time_ns()
    os.utime(f)
    after = time.time_ns()
    st = os.stat(f)
    assert before - 2_000_000_000 <= st.st_mtime_ns <= after + 2_000_000_000
    assert before - 2_000_000_000 <= st.st_atime_ns <= after + 2_000_000_000


def test_utimensat_omit_keeps_the_other_time(f: Path) -> None:
    os.utime(f, ns=(T1, T2))
    utimensat(f, UTIME_OMIT, T1 + 5)  # touch -m
    assert (os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns) == (T1, T1 + 5)
    utimensat(f, T2 + 7, UTIME_OMIT)  # touch -a
    assert (os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns) == (T2 + 7, T1 + 5)


def test_futimens_before_close_survives_the_close(fs_dir: Path) -> None:
    # cp -p / cp -a: write, futimens on the fd, close. Flushing on close must not move mtime.
    p = fs_dir / "copied"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(300_000))
        os.utime(fd, ns=(T1, T2))
    finally:
        os.close(fd)
    assert (os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns) == (T1, T2)


def test_utime_by_path_while_written_fd_is_open(fs_dir: Path) -> None:
    p = fs_dir / "extracted"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 100_000)
        os.utime(p, ns=(T2, T1))
    finally:
        os.close(fd)
    assert os.stat(p).st_mtime_ns == T1
    assert os.stat(p).st_size == 100_000


def test_utime_on_symlink_itself_leaves_target_alone(f: Path, fs_dir: Path) -> None:
    os.utime(f, ns=(T2, T2))
    os.symlink("file", fs_dir / "l")
    os.utime(fs_dir / "l", ns=(T1, T1), follow_symlinks=False)
    assert os.lstat(fs_dir / "l").st_mtime_ns == T1
    assert os.stat(f).st_mtime_ns == T2


CTIME_CHANGES: dict[str, Callable[[Path], Any]] = {
    "chmod": lambda p: os.chmod(p, 0o600),
    "chown": lambda p: os.chown(p, 4321, 4321),
    "utime_to_the_past": lambda p: os.utime(p, ns=(T1, T1)),
    "setxattr": lambda p: os.setxattr(p, "user.k", b"v"),
    "truncate": lambda p: os.truncate(p, 3),
    "write": lambda p: write_file(p, b"new"),
    "rename": lambda p: os.rename(p, p.with_name("renamed")),
}


@pytest.mark.parametrize("op", sorted(CTIME_CHANGES))
def test_ctime_advances_on_change(f: Path, op: str) -> None:
    if op == "chown":
        _need_root()
    before = os.stat(f).st_ctime_ns
    tick()
    CTIME_CHANGES[op](f)
    path = f.with_name("renamed") if op == "rename" else f
    assert os.stat(path).st_ctime_ns > before


def test_reading_does_not_change_mtime_or_ctime(f: Path) -> None:
    os.utime(f, ns=(T1, T2))
    before = os.stat(f)
    tick()
    assert read_file(f) == b"0123456789"
    after = os.stat(f)
    assert (after.st_mtime_ns, after.st_ctime_ns) == (T2, before.st_ctime_ns)


DIR_CHANGES: dict[str, Callable[[Path], Any]] = {
    "create_file": lambda dd: write_file(dd / "new", b""),
    "mkdir": lambda dd: (dd / "newdir").mkdir(),
    "symlink": lambda dd: os.symlink("x", dd / "newlink"),
    "unlink": lambda dd: os.unlink(dd / "old"),
    "rename_within": lambda dd: os.rename(dd / "old", dd / "renamed"),
    "rename_out": lambda dd: os.rename(dd / "old", dd.parent / "moved-out"),
}


@pytest.mark.parametrize("op", sorted(DIR_CHANGES))
def test_directory_mtime_advances_when_entries_change(d: Path, op: str) -> None:
    # file managers and `make` watch directory mtimes
    write_file(d / "old", b"")
    os.utime(d, ns=(T1, T1))
    ctime = os.stat(d).st_ctime_ns
    tick()
    DIR_CHANGES[op](d)
    st = os.stat(d)
    assert st.st_mtime_ns > T1
    assert st.st_ctime_ns > ctime


# ================================================================= mkdir / rmdir


def test_mkdir_creates_empty_directory_with_mode(fs_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        os.mkdir(fs_dir / "a", 0o777)
        os.mkdir(fs_dir / "b", 0o700)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fs_dir / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(fs_dir / "b").st_mode) == 0o700
    assert os.listdir(fs_dir / "a") == []
    assert (os.stat(fs_dir / "a").st_uid, os.stat(fs_dir / "a").st_gid) == (os.geteuid(), os.getegid())


def test_mkdir_on_existing_directory_is_eexist(d: Path) -> None:
    with raises_errno(errno.EEXIST):
        os.mkdir(d)


def test_mkdir_on_existing_file_is_eexist(f: Path) -> None:
    with raises_errno(errno.EEXIST):
        os.mkdir(f)
    assert read_file(f) == b"0123456789"


def test_mkdir_on_dangling_symlink_is_eexist(fs_dir: Path) -> None:
    os.symlink("nowhere", fs_dir / "l")
    with raises_errno(errno.EEXIST):
        os.mkdir(fs_dir / "l")
    assert not (fs_dir / "nowhere").exists()


def test_makedirs_creates_a_chain(fs_dir: Path) -> None:
    os.makedirs(fs_dir / "a" / "b" / "c")
    assert os.listdir(fs_dir / "a") == ["b"]
    assert os.path.isdir(fs_dir / "a" / "b" / "c")


def test_rmdir_removes_empty_directory(d: Path, fs_dir: Path) -> None:
    os.rmdir(d)
    assert os.listdir(fs_dir) == []
    with raises_errno(errno.ENOENT):
        os.stat(d)


def test_rmdir_non_empty_is_enotempty(d: Path) -> None:
    write_file(d / "x", b"")
    with raises_errno(errno.ENOTEMPTY):
        os.rmdir(d)
    assert os.listdir(d) == ["x"]


def test_rmdir_with_only_hidden_file_is_enotempty(d: Path) -> None:
    write_file(d / ".hidden", b"")
    with raises_errno(errno.ENOTEMPTY):
        os.rmdir(d)


def test_rmdir_with_only_subdirectory_is_enotempty(d: Path) -> None:
    (d / "sub").mkdir()
    with raises_errno(errno.ENOTEMPTY):
        os.rmdir(d)


def test_rmdir_of_file_is_enotdir(f: Path) -> None:
    with raises_errno(errno.ENOTDIR):
        os.rmdir(f)
    assert f.exists()


def test_rmdir_of_symlink_to_directory_is_enotdir(d: Path, fs_dir: Path) -> None:
    os.symlink("dir", fs_dir / "l")
    with raises_errno(errno.ENOTDIR):
        os.rmdir(fs_dir / "l")
    assert d.is_dir() and (fs_dir / "l").is_symlink()


def test_rmdir_of_dot_is_einval(d: Path) -> None:
    with raises_errno(errno.EINVAL):
        os.rmdir(f"{d}/.")  # a string: pathlib would drop the "."
    assert d.is_dir()


def test_rmtree_removes_a_mixed_tree(fs_dir: Path) -> None:
    root = make_source_tree(fs_dir / "tree", owners=False)
    shutil.rmtree(root)
    assert os.listdir(fs_dir) == []


# ================================================================= unlink


def test_unlink_removes_file(f: Path, fs_dir: Path) -> None:
    os.unlink(f)
    assert os.listdir(fs_dir) == []
    with raises_errno(errno.ENOENT):
        os.stat(f)


def test_unlink_directory_is_eisdir(d: Path) -> None:
    with raises_errno(errno.EISDIR):
        os.unlink(d)
    assert d.is_dir()


def test_unlink_symlink_removes_link_not_target(f: Path, fs_dir: Path) -> None:
    os.symlink("file", fs_dir / "l")
    os.unlink(fs_dir / "l")
    assert sorted(os.listdir(fs_dir)) == ["file"]
    assert read_file(f) == b"0123456789"


def test_unlinked_open_file_stays_readable_until_close(fs_dir: Path) -> None:
    data = os.urandom(3 * MiB)
    p = fs_dir / "victim"
    write_file(p, data)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        assert os.listdir(fs_dir) == []
        assert pread_all(fd, len(data)) == data
        assert os.fstat(fd).st_size == len(data)
    finally:
        os.close(fd)


def test_unlinked_open_file_reports_zero_links(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.unlink(f)
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)


def test_unlinked_open_file_accepts_writes(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        os.pwrite(fd, b"still here", 20)
        assert pread_all(fd, 100) == b"0123456789" + bytes(10) + b"still here"
    finally:
        os.close(fd)


def test_new_file_with_unlinked_name_is_independent_of_open_old_one(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.unlink(f)
        write_file(f, b"brand new")
        assert pread_all(fd, 100) == b"0123456789"
        assert read_file(f) == b"brand new"
    finally:
        os.close(fd)
    assert read_file(f) == b"brand new"


# ================================================================= rename


def test_rename_file_to_new_name(f: Path, fs_dir: Path) -> None:
    os.rename(f, fs_dir / "new")
    assert os.listdir(fs_dir) == ["new"]
    assert read_file(fs_dir / "new") == b"0123456789"


def test_rename_file_across_directories(f: Path, d: Path, fs_dir: Path) -> None:
    os.rename(f, d / "moved")
    assert sorted(os.listdir(fs_dir)) == ["dir"]
    assert os.listdir(d) == ["moved"]
    assert read_file(d / "moved") == b"0123456789"


def test_rename_keeps_metadata(f: Path, d: Path) -> None:
    os.chmod(f, 0o640)
    os.setxattr(f, "user.k", b"v")
    os.utime(f, ns=(T1, T2))
    os.rename(f, d / "moved")
    st = os.stat(d / "moved")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_atime_ns) == (0o640, T2, T1)
    assert os.getxattr(d / "moved", "user.k") == b"v"


def test_rename_over_existing_file_replaces_it(f: Path, fs_dir: Path) -> None:
    write_file(fs_dir / "target", b"old content")
    os.rename(f, fs_dir / "target")
    assert os.listdir(fs_dir) == ["target"]
    assert read_file(fs_dir / "target") == b"0123456789"


def test_rename_over_existing_is_atomic_for_concurrent_readers(fs_dir: Path) -> None:
    target = fs_dir / "config"
    versions = [bytes([65 + i % 26]) * (1000 + 37 * i) for i in range(150)]
    write_file(target, versions[0])
    valid = set(versions)
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                data = read_file(target)
            except FileNotFoundError:
                problems.append("target vanished during rename")
                continue
            if data not in valid:
                problems.append(f"torn read: {len(data)} bytes")
            reads[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, len(versions)):
            write_file(fs_dir / "config.tmp", versions[i])
            os.rename(fs_dir / "config.tmp", target)
            assert read_file(target) == versions[i]  # the old content is never seen again
    finally:
        stop.set()
        t.join()
    assert problems == []
    assert reads[0] > 0
    assert os.listdir(fs_dir) == ["config"]


def test_rename_over_open_file_keeps_old_content_on_the_fd(fs_dir: Path) -> None:
    write_file(fs_dir / "target", b"old content")
    write_file(fs_dir / "new", b"new content")
    fd = os.open(fs_dir / "target", os.O_RDONLY)
    try:
        os.rename(fs_dir / "new", fs_dir / "target")
        assert os.pread(fd, 100, 0) == b"old content"
        assert read_file(fs_dir / "target") == b"new content"
    finally:
        os.close(fd)


def test_rename_directory_carries_its_contents(d: Path, fs_dir: Path) -> None:
    (d / "sub").mkdir()
    write_file(d / "sub" / "x", b"inside")
    os.rename(d, fs_dir / "renamed")
    assert os.listdir(fs_dir) == ["renamed"]
    assert read_file(fs_dir / "renamed" / "sub" / "x") == b"inside"
    with raises_errno(errno.ENOENT):
        os.stat(d / "sub" / "x")


def test_rename_directory_across_directories_updates_dotdot(fs_dir: Path) -> None:
    os.makedirs(fs_dir / "a" / "child")
    (fs_dir / "b").mkdir()
    os.rename(fs_dir / "a" / "child", fs_dir / "b" / "child")
    assert os.stat(fs_dir / "b" / "child" / "..").st_ino == os.stat(fs_dir / "b").st_ino
    assert os.listdir(fs_dir / "a") == []


def test_rename_directory_over_empty_directory(d: Path, fs_dir: Path) -> None:
    write_file(d / "x", b"1")
    (fs_dir / "empty").mkdir()
    os.rename(d, fs_dir / "empty")
    assert os.listdir(fs_dir) == ["empty"]
    assert os.listdir(fs_dir / "empty") == ["x"]


def test_rename_directory_over_non_empty_directory_is_enotempty(d: Path, fs_dir: Path) -> None:
    (fs_dir / "full").mkdir()
    write_file(fs_dir / "full" / "keep", b"k")
    with raises_errno(errno.ENOTEMPTY):
        os.rename(d, fs_dir / "full")
    assert os.listdir(fs_dir / "full") == ["keep"]
    assert d.is_dir()


def test_rename_file_over_directory_is_eisdir(f: Path, d: Path) -> None:
    with raises_errno(errno.EISDIR):
        os.rename(f, d)
    assert d.is_dir() and f.is_file()


def test_rename_directory_over_file_is_enotdir(f: Path, d: Path) -> None:
    with raises_errno(errno.ENOTDIR):
        os.rename(d, f)
    assert d.is_dir() and read_file(f) == b"0123456789"


def test_rename_directory_into_its_own_subdirectory_is_einval(d: Path) -> None:
    (d / "sub").mkdir()
    with raises_errno(errno.EINVAL):
        os.rename(d, d / "sub" / "inside")
    with raises_errno(errno.EINVAL):
        os.rename(d, d / "inside")
    assert os.listdir(d) == ["sub"]


def test_rename_missing_source_is_enoent(fs_dir: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.rename(fs_dir / "missing", fs_dir / "other")
    assert os.listdir(fs_dir) == []


def test_rename_into_missing_directory_is_enoent(f: Path, fs_dir: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.rename(f, fs_dir / "nodir" / "x")
    assert read_file(f) == b"0123456789"


def test_rename_file_to_itself_is_a_no_op(f: Path, fs_dir: Path) -> None:
    ino = os.stat(f).st_ino
    os.rename(f, f)
    assert os.listdir(fs_dir) == ["file"]
    assert read_file(f) == b"0123456789"
    assert os.stat(f).st_ino == ino


def test_rename_directory_to_itself_is_a_no_op(d: Path, fs_dir: Path) -> None:
    write_file(d / "x", b"1")
    os.rename(d, d)
    assert os.listdir(fs_dir) == ["dir"]
    assert os.listdir(d) == ["x"]


def test_rename_symlink_keeps_its_target(f: Path, fs_dir: Path) -> None:
    os.symlink("file", fs_dir / "l")
    os.rename(fs_dir / "l", fs_dir / "l2")
    assert os.readlink(fs_dir / "l2") == "file"
    assert read_file(fs_dir / "l2") == b"0123456789"


def test_rename_file_over_symlink_replaces_the_link(f: Path, fs_dir: Path) -> None:
    write_file(fs_dir / "other", b"other")
    os.symlink("other", fs_dir / "l")
    os.rename(f, fs_dir / "l")
    assert not os.path.islink(fs_dir / "l")
    assert read_file(fs_dir / "l") == b"0123456789"
    assert read_file(fs_dir / "other") == b"other"


# ================================================================= symlinks


@pytest.mark.parametrize("target", ["file", "./sub/../file", "naïve-日本語-🦊", "no/such/thing", "a" * 1000],
                         ids=["relative", "dotted", "unicode", "dangling", "long"])
def test_symlink_readlink_returns_exact_target(fs_dir: Path, target: str) -> None:
    os.symlink(target, fs_dir / "l")
    assert os.readlink(fs_dir / "l") == target
    st = os.lstat(fs_dir / "l")
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == len(target.encode())


def test_symlink_with_absolute_target(f: Path, fs_dir: Path) -> None:
    os.symlink(str(f), fs_dir / "abs")
    assert os.readlink(fs_dir / "abs") == str(f)
    assert read_file(fs_dir / "abs") == b"0123456789"


def test_symlink_target_of_4095_bytes(fs_dir: Path) -> None:
    target = "/".join(["x" * 99] * 40) + "/" + "y" * 95
    assert len(target) == 4095
    os.symlink(target, fs_dir / "l")
    assert os.readlink(fs_dir / "l") == target


def test_stat_follows_symlink_lstat_does_not(f: Path, fs_dir: Path) -> None:
    os.symlink("file", fs_dir / "l")
    st, lst = os.stat(fs_dir / "l"), os.lstat(fs_dir / "l")
    assert stat.S_ISREG(st.st_mode) and st.st_ino == os.stat(f).st_ino and st.st_size == 10
    assert stat.S_ISLNK(lst.st_mode) and lst.st_ino != st.st_ino and lst.st_size == 4


def test_dangling_symlink_stat_is_enoent_lstat_works(fs_dir: Path) -> None:
    os.symlink("nowhere", fs_dir / "l")
    with raises_errno(errno.ENOENT):
        os.stat(fs_dir / "l")
    assert stat.S_ISLNK(os.lstat(fs_dir / "l").st_mode)
    assert os.listdir(fs_dir) == ["l"]


def test_symlink_to_directory_is_traversed(d: Path, fs_dir: Path) -> None:
    write_file(d / "inner", b"through the link")
    os.symlink("dir", fs_dir / "l")
    assert read_file(fs_dir / "l" / "inner") == b"through the link"
    assert os.listdir(fs_dir / "l") == ["inner"]
    write_file(fs_dir / "l" / "created", b"c")
    assert read_file(d / "created") == b"c"


def test_symlink_loop_is_eloop(fs_dir: Path) -> None:
    os.symlink("b", fs_dir / "a")
    os.symlink("a", fs_dir / "b")
    with raises_errno(errno.ELOOP):
        os.stat(fs_dir / "a")


def test_symlink_over_existing_name_is_eexist(f: Path) -> None:
    with raises_errno(errno.EEXIST):
        os.symlink("x", f)
    assert read_file(f) == b"0123456789"


def test_readlink_of_regular_file_is_einval(f: Path) -> None:
    with raises_errno(errno.EINVAL):
        os.readlink(f)


def test_emacs_lock_symlink(f: Path, fs_dir: Path) -> None:
    # Emacs locks a file with a dangling symlink whose target is user@host.pid:boot
    lock = fs_dir / ".#file"
    os.symlink("root@host.example.1234:1700000000", lock)
    with raises_errno(errno.EEXIST):
        os.symlink("other@elsewhere.99:1", lock)
    assert os.readlink(lock) == "root@host.example.1234:1700000000"
    os.unlink(lock)
    assert os.listdir(fs_dir) == ["file"]


# ================================================================= hard links


def test_hard_link_works_fully_or_is_refused_with_enotsup(f: Path, fs_dir: Path) -> None:
    """pluto may document hard links as unsupported: then ENOTSUP/EOPNOTSUPP (or EPERM), and nothing created."""
    try:
        os.link(f, fs_dir / "hard")
    except OSError as e:
        assert e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM), (
            f"link failed with {errno.errorcode.get(e.errno)}")
        assert os.listdir(fs_dir) == ["file"]
        assert os.stat(f).st_nlink == 1
        return
    a, b = os.stat(f), os.stat(fs_dir / "hard")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert b.st_nlink == 2
    assert read_file(fs_dir / "hard") == b"0123456789"
    fd = os.open(fs_dir / "hard", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"+")
    os.close(fd)
    assert read_file(f) == b"0123456789+"
    os.unlink(f)
    assert os.stat(fs_dir / "hard").st_nlink == 1
    assert read_file(fs_dir / "hard") == b"0123456789+"


def test_hard_link_of_directory_is_eperm(d: Path, fs_dir: Path) -> None:
    with raises_errno(errno.EPERM):
        os.link(d, fs_dir / "hard")


def test_hard_link_onto_existing_name_is_eexist(f: Path, fs_dir: Path) -> None:
    write_file(fs_dir / "other", b"other")
    with raises_errno(errno.EEXIST):
        os.link(f, fs_dir / "other")
    assert read_file(fs_dir / "other") == b"other"


# ================================================================= names


@pytest.mark.parametrize("make", ["file", "dir", "symlink"])
def test_255_byte_name_works(fs_dir: Path, make: str) -> None:
    name = "n" * 255
    p = fs_dir / name
    if make == "file":
        write_file(p, b"long")
    elif make == "dir":
        p.mkdir()
    else:
        os.symlink("t", p)
    assert os.listdir(fs_dir) == [name]
    assert os.lstat(p).st_ino > 0


NAME_TOO_LONG: dict[str, Callable[[Path, str], Any]] = {
    "create": lambda r, n: os.open(r / n, os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir": lambda r, n: os.mkdir(r / n),
    "symlink": lambda r, n: os.symlink("t", r / n),
    "rename_target": lambda r, n: os.rename(r / "src", r / n),
    "stat": lambda r, n: os.stat(r / n),
}


@pytest.mark.parametrize("op", sorted(NAME_TOO_LONG))
@pytest.mark.parametrize("name", ["n" * 256, "é" * 128], ids=["ascii256", "utf8_256_bytes"])
def test_256_byte_name_is_enametoolong(fs_dir: Path, op: str, name: str) -> None:
    write_file(fs_dir / "src", b"s")
    with raises_errno(errno.ENAMETOOLONG):
        NAME_TOO_LONG[op](fs_dir, name)
    assert os.listdir(fs_dir) == ["src"]


def test_255_byte_utf8_name_works(fs_dir: Path) -> None:
    name = "日" * 85  # 3 bytes each
    assert len(name.encode()) == 255
    write_file(fs_dir / name, b"cjk")
    assert os.listdir(fs_dir) == [name]
    assert read_file(fs_dir / name) == b"cjk"


ODD_NAMES = ["with space", " leading", "trailing ", "new\nline", "tab\tname", "quote'single", 'quote"double',
             "back\\slash", "-dash", ".hidden", "..dots", "...", "naïve café", "日本語", "emoji-🦊🚀",
             "%s%n", "$(echo x)", "*?[]", "#hash", "\x01ctrl", "\u200bzero-width"]


@pytest.mark.parametrize("name", ODD_NAMES, ids=[repr(n) for n in ODD_NAMES])
def test_odd_names_round_trip(fs_dir: Path, name: str) -> None:
    p = fs_dir / name
    write_file(p, name.encode())
    assert os.listdir(fs_dir) == [name]
    assert read_file(p) == name.encode()
    os.rename(p, fs_dir / (name + ".2"))
    assert os.listdir(fs_dir) == [name + ".2"]
    os.unlink(fs_dir / (name + ".2"))
    assert os.listdir(fs_dir) == []


def test_names_are_not_unicode_normalised(fs_dir: Path) -> None:
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    write_file(fs_dir / nfc, b"nfc")
    with raises_errno(errno.ENOENT):
        os.stat(fs_dir / nfd)
    write_file(fs_dir / nfd, b"nfd")
    assert sorted(os.listdir(fs_dir)) == sorted([nfc, nfd])
    assert read_file(fs_dir / nfc) == b"nfc"
    assert read_file(fs_dir / nfd) == b"nfd"


def test_names_are_case_sensitive(fs_dir: Path) -> None:
    write_file(fs_dir / "Readme", b"upper")
    write_file(fs_dir / "readme", b"lower")
    assert sorted(os.listdir(fs_dir)) == ["Readme", "readme"]
    assert read_file(fs_dir / "Readme") == b"upper"


def test_non_utf8_name_is_kept_exactly_or_refused_with_eilseq(fs_dir: Path) -> None:
    """pluto stores names as UTF-8 and documents EILSEQ for others; other filesystems keep the bytes."""
    raw = os.fsencode(fs_dir) + b"/bad-\xff\xfe-name"
    try:
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as e:
        assert e.errno == errno.EILSEQ, f"expected success or EILSEQ, got {errno.errorcode.get(e.errno)}"
        assert os.listdir(fs_dir) == []
        return
    os.close(fd)
    assert os.listdir(os.fsencode(fs_dir)) == [b"bad-\xff\xfe-name"]


# ================================================================= xattrs


def test_xattr_set_get_list_remove(f: Path) -> None:
    os.setxattr(f, "user.color", b"red")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.binary", bytes(range(256)) * 4)
    assert os.getxattr(f, "user.color") == b"red"
    assert os.getxattr(f, "user.empty") == b""
    assert os.getxattr(f, "user.binary") == bytes(range(256)) * 4
    assert sorted(n for n in os.listxattr(f) if n.startswith("user.")) == ["user.binary", "user.color", "user.empty"]
    os.removexattr(f, "user.color")
    assert sorted(n for n in os.listxattr(f) if n.startswith("user.")) == ["user.binary", "user.empty"]
    assert read_file(f) == b"0123456789"


def test_xattr_overwrite_replaces_value(f: Path) -> None:
    os.setxattr(f, "user.v", b"a long first value")
    os.setxattr(f, "user.v", b"short")
    assert os.getxattr(f, "user.v") == b"short"


def test_xattr_on_directory(d: Path) -> None:
    os.setxattr(d, "user.dir", b"yes")
    assert user_xattrs(d) == {"user.dir": b"yes"}


def test_xattr_via_file_descriptor(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.setxattr(fd, "user.fd", b"1")
        assert os.getxattr(fd, "user.fd") == b"1"
        assert "user.fd" in os.listxattr(fd)
    finally:
        os.close(fd)


def test_xattr_survives_rename(f: Path, d: Path) -> None:
    os.setxattr(f, "user.k", b"v")
    os.rename(f, d / "moved")
    assert user_xattrs(d / "moved") == {"user.k": b"v"}


def test_getxattr_missing_is_enodata(f: Path) -> None:
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.missing")


def test_removexattr_missing_is_enodata(f: Path) -> None:
    with raises_errno(errno.ENODATA):
        os.removexattr(f, "user.missing")


def test_xattr_create_on_existing_is_eexist(f: Path) -> None:
    os.setxattr(f, "user.k", b"first")
    with raises_errno(errno.EEXIST):
        os.setxattr(f, "user.k", b"second", os.XATTR_CREATE)
    assert os.getxattr(f, "user.k") == b"first"


def test_xattr_create_on_missing_creates(f: Path) -> None:
    os.setxattr(f, "user.k", b"v", os.XATTR_CREATE)
    assert os.getxattr(f, "user.k") == b"v"


def test_xattr_replace_on_missing_is_enodata(f: Path) -> None:
    with raises_errno(errno.ENODATA):
        os.setxattr(f, "user.k", b"v", os.XATTR_REPLACE)
    assert user_xattrs(f) == {}


def test_xattr_replace_on_existing_replaces(f: Path) -> None:
    os.setxattr(f, "user.k", b"old")
    os.setxattr(f, "user.k", b"new", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.k") == b"new"


def test_new_file_has_no_user_xattrs(f: Path) -> None:
    assert user_xattrs(f) == {}


def test_user_xattr_on_symlink_itself_is_eperm(f: Path, fs_dir: Path) -> None:
    os.symlink("file", fs_dir / "l")
    with raises_errno(errno.EPERM):
        os.setxattr(fs_dir / "l", "user.k", b"v", follow_symlinks=False)


def test_xattr_name_over_255_bytes_is_erange(f: Path) -> None:
    with raises_errno(errno.ERANGE):
        os.setxattr(f, "user." + "x" * 251, b"v")


# ================================================================= readdir


def test_empty_directory_lists_nothing(d: Path) -> None:
    assert os.listdir(d) == []
    assert list(os.scandir(d)) == []


def test_readdir_lists_all_500_files(d: Path) -> None:
    names = {f"file-{i:04d}.txt" for i in range(500)}
    for n in names:
        write_file(d / n, n.encode())
    listed = os.listdir(d)
    assert len(listed) == 500
    assert set(listed) == names
    assert sorted(os.listdir(d)) == sorted(listed)  # a second pass agrees


def test_readdir_returns_dot_and_dotdot_once_each_or_neither(d: Path) -> None:
    for i in range(3):
        write_file(d / f"f{i}", b"")
    raw = raw_readdir(d)
    others = sorted(n for n in raw if n not in (b".", b".."))
    assert others == [b"f0", b"f1", b"f2"]
    assert raw.count(b".") == raw.count(b"..")
    assert raw.count(b".") <= 1
    assert len(raw) == len(set(raw))


def test_listdir_never_contains_dot_entries(d: Path) -> None:
    write_file(d / "x", b"")
    assert os.listdir(d) == ["x"]


def test_scandir_reports_entry_types(d: Path) -> None:
    write_file(d / "file", b"")
    (d / "subdir").mkdir()
    os.symlink("file", d / "link")
    kinds = {e.name: (e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False), e.is_symlink())
             for e in os.scandir(d)}
    assert kinds == {"file": (True, False, False), "subdir": (False, True, False), "link": (False, False, True)}


def _long_names(prefix: str, count: int) -> list[str]:
    # Long names make a listing span many readdir batches (FUSE sends about 4 KiB at a time).
    return [f"{prefix}-{i:04d}-" + "p" * 200 for i in range(count)]


def test_listing_while_adding_returns_every_old_entry_exactly_once(d: Path) -> None:
    old = _long_names("old", 300)
    for n in old:
        write_file(d / n, b"")
    seen: list[str] = []
    added: list[str] = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i % 2 == 0:
                added.append(f"new-{i:04d}")
                write_file(d / added[-1], b"")
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert set(old) <= set(seen)
    assert set(seen) - set(old) <= set(added)  # new entries may or may not show up, but nothing else
    assert sorted(os.listdir(d)) == sorted(old + added)


def test_listing_while_unlinking_sees_every_entry(d: Path) -> None:
    # rm -r / file managers delete entries as they read them; no entry may be skipped.
    names = _long_names("gone", 300)
    for n in names:
        write_file(d / n, b"")
    seen = []
    with os.scandir(d) as it:
        for entry in it:
            seen.append(entry.name)
            os.unlink(entry.path)
    assert sorted(seen) == sorted(names)
    assert os.listdir(d) == []


def test_listing_reflects_rename(f: Path, fs_dir: Path) -> None:
    assert os.listdir(fs_dir) == ["file"]
    os.rename(f, fs_dir / "renamed")
    assert os.listdir(fs_dir) == ["renamed"]


# ================================================================= fsync / mmap / locks


def test_fsync_and_fdatasync_succeed(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        os.write(fd, b"AB")
        assert os.fsync(fd) is None
        os.write(fd, b"CD")
        assert os.fdatasync(fd) is None
    finally:
        os.close(fd)
    assert read_file(f) == b"ABCD456789"


def test_fsync_on_read_only_descriptor_succeeds(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.fsync(fd) is None
    finally:
        os.close(fd)


def test_fsync_on_directory_descriptor_succeeds(d: Path) -> None:
    write_file(d / "x", b"")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.fsync(fd) is None
    finally:
        os.close(fd)


def test_mmap_shared_write_msync_then_read(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        with mmap.mmap(fd, 10, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[2:5] = b"XYZ"
            m.flush()  # msync(MS_SYNC)
            assert os.pread(fd, 10, 0) == b"01XYZ56789"
    finally:
        os.close(fd)
    assert read_file(f) == b"01XYZ56789"


def test_mmap_write_to_extended_file_persists_after_unmap(fs_dir: Path) -> None:
    p = fs_dir / "mapped"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 3 * mmap.PAGESIZE)
        with mmap.mmap(fd, 3 * mmap.PAGESIZE) as m:
            m[mmap.PAGESIZE - 2 : mmap.PAGESIZE + 2] = b"edge"
            m[-1:] = b"!"
    finally:
        os.close(fd)
    data = read_file(p)
    assert len(data) == 3 * mmap.PAGESIZE
    assert data[mmap.PAGESIZE - 2 : mmap.PAGESIZE + 2] == b"edge"
    assert data[-1:] == b"!"
    assert data.count(0) == len(data) - 5


def test_mmap_read_matches_file(fs_dir: Path) -> None:
    data = os.urandom(MiB + 123)
    write_file(fs_dir / "r", data)
    with open(fs_dir / "r", "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[:] == data
        assert len(m) == len(data)


def test_mmap_sees_later_write(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        with mmap.mmap(fd, 10, access=mmap.ACCESS_READ) as m:
            os.pwrite(fd, b"W", 0)
            assert m[:1] == b"W"
    finally:
        os.close(fd)


def test_mmap_private_write_does_not_reach_the_file(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 10, access=mmap.ACCESS_COPY) as m:
            m[0:3] = b"abc"
            assert m[:] == b"abc3456789"
    finally:
        os.close(fd)
    assert read_file(f) == b"0123456789"


def test_flock_conflicts_between_open_file_descriptions(f: Path) -> None:
    a = os.open(f, os.O_RDWR)
    b = os.open(f, os.O_RDWR)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with raises_errno(errno.EWOULDBLOCK):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(a, fcntl.LOCK_UN)
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def test_fcntl_record_lock_conflicts_between_processes(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)

        def try_lock() -> str:
            other = os.open(f, os.O_RDWR)
            fcntl.lockf(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return "locked"

        assert run_as(None, None, try_lock) == ("errno", errno.EAGAIN)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        assert run_as(None, None, try_lock) == ("ok", "locked")
    finally:
        os.close(fd)


# ================================================================= statvfs


def test_statvfs_is_sane(fs_dir: Path) -> None:
    sv = os.statvfs(fs_dir)
    assert sv.f_bsize > 0
    assert sv.f_frsize > 0
    assert sv.f_blocks > 0
    assert 0 < sv.f_bfree <= sv.f_blocks
    assert 0 <= sv.f_bavail <= sv.f_bfree
    assert sv.f_blocks * sv.f_frsize < 1 << 64  # below 16 EiB
    assert sv.f_namemax >= 255


def test_statvfs_of_a_file_matches_its_directory(f: Path, fs_dir: Path) -> None:
    a, b = os.statvfs(f), os.statvfs(fs_dir)
    assert (a.f_bsize, a.f_frsize, a.f_blocks, a.f_namemax) == (b.f_bsize, b.f_frsize, b.f_blocks, b.f_namemax)


# ================================================================= large files


def test_file_past_4_gib_via_sparse_write(fs_dir: Path) -> None:
    p = fs_dir / "huge"
    tail = os.urandom(64 * 1024) + b"END"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            os.pwrite(fd, tail, 4 * GiB)
        except OSError as e:
            if e.errno == errno.EFBIG:
                pytest.skip("this filesystem caps file size below 4 GiB (EFBIG)")
            raise
        assert os.fstat(fd).st_size == 4 * GiB + len(tail)
        assert pread_all(fd, len(tail), 4 * GiB) == tail
        assert pread_all(fd, 16 + 8, 4 * GiB - 16) == bytes(16) + tail[:8]
        assert pread_all(fd, 4096, 2 * GiB) == bytes(4096)
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 4 * GiB + len(tail)
    with open(p, "rb") as fh:
        fh.seek(-3, os.SEEK_END)
        assert fh.read() == b"END"


def test_truncate_up_past_4_gib_reads_zeros(f: Path) -> None:
    try:
        os.truncate(f, 5 * GiB)
    except OSError as e:
        if e.errno == errno.EFBIG:
            pytest.skip("this filesystem caps file size below 4 GiB (EFBIG)")
        raise
    fd = os.open(f, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 5 * GiB
        assert os.pread(fd, 10, 0) == b"0123456789"
        assert pread_all(fd, 100, 5 * GiB - 100) == bytes(100)
    finally:
        os.close(fd)


# ================================================================= permissions as another user


@pytest.fixture
def as_nobody(fs_dir: Path) -> Iterator[Callable[[Callable[[int], Any]], tuple[str, Any]]]:
    """Run fn(dir_fd of fs_dir) in a child as uid/gid 65534 (the fs must be mounted allow_other).

    The child works relative to an fd of fs_dir, so only fs_dir's own bits
    (made 0o755 here) and the entries under it matter, not the path above it.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to fork a child that drops to uid 65534")
    os.chmod(fs_dir, 0o755)
    dfd = os.open(fs_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield lambda fn: run_as(NOBODY, NOBODY, lambda: fn(dfd))
    finally:
        os.close(dfd)


def test_other_user_can_read_but_not_write_0444_file(fs_dir: Path, as_nobody) -> None:
    write_file(fs_dir / "ro", b"data", 0o444)
    assert as_nobody(lambda dfd: os.read(os.open("ro", os.O_RDONLY, dir_fd=dfd), 10)) == ("ok", b"data")
    assert as_nobody(lambda dfd: os.open("ro", os.O_WRONLY, dir_fd=dfd)) == ("errno", errno.EACCES)
    assert as_nobody(lambda dfd: os.open("ro", os.O_WRONLY | os.O_TRUNC, dir_fd=dfd)) == ("errno", errno.EACCES)
    assert read_file(fs_dir / "ro") == b"data"


def test_access_for_other_user_follows_mode_bits(fs_dir: Path, as_nobody) -> None:
    write_file(fs_dir / "ro", b"", 0o444)
    write_file(fs_dir / "rw", b"", 0o666)
    check = lambda name: lambda dfd: [os.access(name, m, dir_fd=dfd) for m in (os.R_OK, os.W_OK, os.X_OK)]  # noqa: E731
    assert as_nobody(check("ro")) == ("ok", [True, False, False])
    assert as_nobody(check("rw")) == ("ok", [True, True, False])


def test_root_can_write_0444_file(fs_dir: Path) -> None:
    _need_root()
    write_file(fs_dir / "ro", b"data", 0o444)
    fd = os.open(fs_dir / "ro", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+root")
    finally:
        os.close(fd)
    assert read_file(fs_dir / "ro") == b"data+root"


def test_other_user_cannot_list_0700_root_directory(fs_dir: Path, as_nobody) -> None:
    (fs_dir / "open").mkdir(mode=0o755)
    (fs_dir / "secret").mkdir(mode=0o700)
    write_file(fs_dir / "open" / "a", b"")
    write_file(fs_dir / "secret" / "b", b"")

    def listing(name: str) -> Callable[[int], list[str]]:
        return lambda dfd: os.listdir(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dfd))

    assert as_nobody(listing("open")) == ("ok", ["a"])
    assert as_nobody(listing("secret")) == ("errno", errno.EACCES)


def test_other_user_cannot_look_up_inside_0700_directory(fs_dir: Path, as_nobody) -> None:
    (fs_dir / "secret").mkdir(mode=0o700)
    write_file(fs_dir / "secret" / "b", b"")
    assert as_nobody(lambda dfd: os.stat("secret", dir_fd=dfd).st_uid) == ("ok", 0)
    assert as_nobody(lambda dfd: os.stat("secret/b", dir_fd=dfd)) == ("errno", errno.EACCES)


def test_other_user_cannot_create_or_delete_in_root_0755_directory(fs_dir: Path, as_nobody) -> None:
    write_file(fs_dir / "victim", b"v")
    create = lambda dfd: os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)  # noqa: E731
    assert as_nobody(create) == ("errno", errno.EACCES)
    assert as_nobody(lambda dfd: os.unlink("victim", dir_fd=dfd)) == ("errno", errno.EACCES)
    assert as_nobody(lambda dfd: os.mkdir("newdir", dir_fd=dfd)) == ("errno", errno.EACCES)
    assert sorted(os.listdir(fs_dir)) == ["victim"]


def test_file_created_by_other_user_is_owned_by_that_user(fs_dir: Path, as_nobody) -> None:
    (fs_dir / "public").mkdir()
    os.chmod(fs_dir / "public", 0o777)

    def create(dfd: int) -> tuple[int, int]:
        fd = os.open("public/mine", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dfd)
        os.write(fd, b"nobody's")
        os.close(fd)
        os.mkdir("public/mydir", dir_fd=dfd)
        return os.stat("public/mine", dir_fd=dfd).st_uid, os.stat("public/mine", dir_fd=dfd).st_gid

    assert as_nobody(create) == ("ok", (NOBODY, NOBODY))
    st = os.stat(fs_dir / "public" / "mine")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600)
    assert (os.stat(fs_dir / "public" / "mydir").st_uid) == NOBODY
    assert read_file(fs_dir / "public" / "mine") == b"nobody's"


def test_other_user_cannot_chmod_chown_or_set_times_on_root_file(fs_dir: Path, as_nobody) -> None:
    write_file(fs_dir / "rootfile", b"r", 0o666)
    assert as_nobody(lambda dfd: os.chmod("rootfile", 0o777, dir_fd=dfd)) == ("errno", errno.EPERM)
    assert as_nobody(lambda dfd: os.chown("rootfile", NOBODY, NOBODY, dir_fd=dfd)) == ("errno", errno.EPERM)
    assert as_nobody(lambda dfd: os.utime("rootfile", ns=(T1, T1), dir_fd=dfd)) == ("errno", errno.EPERM)
    st = os.stat(fs_dir / "rootfile")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o666, 0)
    assert st.st_mtime_ns != T1


def test_other_user_with_write_permission_can_touch_to_now(fs_dir: Path, as_nobody) -> None:
    write_file(fs_dir / "rootfile", b"r", 0o666)
    os.utime(fs_dir / "rootfile", ns=(T1, T1))
    assert as_nobody(lambda dfd: os.utime("rootfile", dir_fd=dfd)) == ("ok", None)
    assert os.stat(fs_dir / "rootfile").st_mtime_ns > T1


def test_sticky_directory_stops_deleting_other_users_file(fs_dir: Path, as_nobody) -> None:
    (fs_dir / "tmp").mkdir()
    os.chmod(fs_dir / "tmp", 0o1777)
    write_file(fs_dir / "tmp" / "roots", b"r", 0o666)

    def work(dfd: int) -> list[str]:
        os.close(os.open("tmp/mine", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd))
        os.unlink("tmp/mine", dir_fd=dfd)  # own file: allowed
        try:
            os.unlink("tmp/roots", dir_fd=dfd)
        except OSError as e:
            return [errno.errorcode[e.errno]]
        return ["deleted"]

    assert as_nobody(work) == ("ok", ["EPERM"])
    assert os.listdir(fs_dir / "tmp") == ["roots"]


# ================================================================= tools: cp -a, tar, rsync, git


def test_cp_a_into_the_filesystem_preserves_everything(tmp_path: Path, fs_dir: Path) -> None:
    _need_root()
    src = make_source_tree(tmp_path / "src")
    run(["cp", "-a", str(src), str(fs_dir / "copy")])
    diff_r(src, fs_dir / "copy")
    assert snapshot(fs_dir / "copy") == snapshot(src)


def test_cp_a_out_of_the_filesystem_preserves_everything(tmp_path: Path, fs_dir: Path) -> None:
    _need_root()
    tree = make_source_tree(fs_dir / "tree")
    run(["cp", "-a", str(tree), str(tmp_path / "out")])
    diff_r(tree, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tree)


TAR_X = ["tar", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-xpf"]
TAR_C = ["tar", "--format=posix", "--xattrs", "--xattrs-include=user.*", "-cf"]


def test_tar_x_into_the_filesystem_preserves_everything(tmp_path: Path, fs_dir: Path) -> None:
    _need_root()
    src = make_source_tree(tmp_path / "src")
    run([*TAR_C, str(tmp_path / "a.tar"), "-C", str(src), "."])
    (fs_dir / "x").mkdir()
    run([*TAR_X, str(tmp_path / "a.tar"), "-C", str(fs_dir / "x")])
    diff_r(src, fs_dir / "x")
    assert snapshot(fs_dir / "x") == snapshot(src)


def test_tar_c_out_of_the_filesystem_round_trips(tmp_path: Path, fs_dir: Path) -> None:
    _need_root()
    tree = make_source_tree(fs_dir / "tree")
    run([*TAR_C, str(tmp_path / "b.tar"), "-C", str(tree), "."])
    (tmp_path / "out").mkdir()
    run([*TAR_X, str(tmp_path / "b.tar"), "-C", str(tmp_path / "out")])
    diff_r(tree, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(tree)


def _rsync_a(src: Path, dst: Path) -> None:
    """`rsync -a` (plus xattrs and numeric ids) if installed, else the same receiver steps in Python."""
    if shutil.which("rsync"):
        run(["rsync", "-aX", "--numeric-ids", f"{src}/", f"{dst}/"])
    else:
        py_rsync(src, dst)


def _change_source_tree(src: Path) -> None:
    write_file(src / "small.txt", b"changed content, other length\n", 0o600)
    os.utime(src / "small.txt", ns=(T2, T2))
    write_file(src / "sub" / "added.txt", b"added\n", 0o644)
    os.utime(src / "sub" / "added.txt", ns=(T1, T1))
    os.utime(src / "sub", ns=(T1, T1))
    os.utime(src, ns=(T1, T1))


def test_rsync_a_into_the_filesystem_then_update(tmp_path: Path, fs_dir: Path) -> None:
    _need_root()
    src = make_source_tree(tmp_path / "src")
    dst = fs_dir / "mirror"
    _rsync_a(src, dst)
    diff_r(src, dst)
    assert snapshot(dst) == snapshot(src)
    _change_source_tree(src)
    _rsync_a(src, dst)  # second pass: temp file + rename over the existing one
    diff_r(src, dst)
    assert snapshot(dst) == snapshot(src)
    assert read_file(dst / "small.txt") == b"changed content, other length\n"
    assert not [n for n in os.listdir(dst) if n.startswith(".small.txt.")]


def test_rsync_style_receiver_in_python(tmp_path: Path, fs_dir: Path) -> None:
    """rsync's receiver steps without rsync: .name.XXXXXX temp, chown/chmod/xattrs/utime on it, rename over."""
    _need_root()
    src = make_source_tree(tmp_path / "src")
    dst = fs_dir / "mirror"
    py_rsync(src, dst)
    assert snapshot(dst) == snapshot(src)
    before = os.stat(dst / "small.txt").st_ino
    _change_source_tree(src)
    py_rsync(src, dst)
    assert snapshot(dst) == snapshot(src)
    assert os.stat(dst / "small.txt").st_ino != before  # replaced by rename, not rewritten in place
    diff_r(src, dst)


def _git(repo: Path, home: Path, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.invalid", "LC_ALL": "C"}
    return run(["git", "-c", "init.defaultBranch=main", "-c", "core.quotePath=false", *args], cwd=repo, env=env)


def test_git_init_add_commit_clone_inside_the_filesystem(tmp_path: Path, fs_dir: Path) -> None:
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    home = tmp_path / "home"
    home.mkdir()
    src = make_source_tree(tmp_path / "src", empty_dir=False, owners=False, xattrs=False)
    repo = fs_dir / "repo"
    shutil.copytree(src, repo, symlinks=True)
    _git(repo, home, "init", "-q")
    _git(repo, home, "add", "-A")
    _git(repo, home, "commit", "-q", "-m", "first")
    assert _git(repo, home, "status", "--porcelain") == ""
    write_file(repo / "small.txt", b"second version\n")
    _git(repo, home, "commit", "-q", "-am", "second")
    assert _git(repo, home, "rev-list", "--count", "HEAD").strip() == "2"
    _git(repo, home, "fsck", "--full", "--strict")
    _git(repo, home, "gc", "-q")  # packs objects, rewrites refs with lockfiles + rename
    _git(repo, home, "checkout", "-q", "HEAD~1", "--", "small.txt")
    assert read_file(repo / "small.txt") == read_file(src / "small.txt")
    _git(repo, home, "commit", "-q", "-am", "revert small.txt")
    _git(fs_dir, home, "clone", "-q", str(repo), str(fs_dir / "clone"))
    diff_r(src, fs_dir / "clone", "-x", ".git")
    diff_r(src, repo, "-x", ".git")
    assert _git(fs_dir / "clone", home, "status", "--porcelain") == ""


# ================================================================= editors


def test_editor_atomic_save_with_swap_file_while_file_is_open(fs_dir: Path) -> None:
    target = fs_dir / "notes.txt"
    write_file(target, b"version 1\n")
    os.chmod(target, 0o640)
    reader = os.open(target, os.O_RDONLY)  # e.g. a pager or another program holding the file
    try:
        swp = fs_dir / ".notes.txt.swp"
        fd = os.open(swp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"version 2\n")
            os.fchmod(fd, 0o640)  # editors copy the original mode onto the new file
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(fs_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rename(swp, target)
            os.fsync(dfd)
        finally:
            os.close(dfd)
        assert os.pread(reader, 100, 0) == b"version 1\n"
        assert read_file(target) == b"version 2\n"
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
        assert os.listdir(fs_dir) == ["notes.txt"]
    finally:
        os.close(reader)


def test_editor_backup_rename_then_write_new_file(fs_dir: Path) -> None:
    # vim with 'backup': rename file to file~, write a fresh file, delete the backup
    target = fs_dir / "code.py"
    write_file(target, b"print(1)\n")
    os.rename(target, fs_dir / "code.py~")
    write_file(target, b"print(2)\n")
    assert read_file(fs_dir / "code.py~") == b"print(1)\n"
    os.unlink(fs_dir / "code.py~")
    assert os.listdir(fs_dir) == ["code.py"]
    assert read_file(target) == b"print(2)\n"


def test_editor_in_place_rewrite_is_seen_by_an_open_reader(fs_dir: Path) -> None:
    # vim 'backupcopy=yes' / nano: truncate and rewrite the same inode
    target = fs_dir / "inplace.txt"
    write_file(target, b"a much longer original line\n")
    ino = os.stat(target).st_ino
    reader = os.open(target, os.O_RDONLY)
    try:
        write_file(target, b"short\n")
        assert os.pread(reader, 100, 0) == b"short\n"
    finally:
        os.close(reader)
    assert os.stat(target).st_ino == ino
