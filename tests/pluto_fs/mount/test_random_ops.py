"""fsx-style seeded random-operation data verification against `fs_dir`.

A few files are kept open and mutated by a long, seeded, random sequence of
operations: pwrite / lseek+write (also past EOF, leaving holes), O_APPEND
writes, pread / lseek+read, truncate and ftruncate up and down, MAP_SHARED
mmap reads and writes (most followed by msync), fsync / fdatasync, close and
reopen (some with O_TRUNC), a second fd that reads and writes, renames (same
directory, into and out of subdirectories, over an existing file) while the
fd stays open, copies of ranges from one file to another (identical content,
so a deduplicating store shares it; later writes to one copy must not show
in the other), and rare writes near 64 MiB that make large sparse files.

Each file has a model (a bytearray plus a size). Every read is compared with
the model at once; bytes about to be overwritten or cut off are read back
first; every N operations all files are read whole through a fresh fd; at
the end everything is closed and checked from a fresh open, plus os.stat
sizes and the directory listings.

Knobs (environment):
  PLUTO_FSX_SEED          seed (default: DEFAULT_SEED; "random" for a new one; always printed on failure)
  PLUTO_FSX_OPS           number of operations (default 12000; the suite's budget: run 100000 by hand)
  PLUTO_FSX_VERIFY_EVERY  full read-back of every file after this many ops
                          (default 500; set 1 to find the first bad op)

Reproduce a failure with the PLUTO_FSX_SEED / PLUTO_FSX_OPS printed in it.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

KiB = 1024
MiB = 1024 * KiB

N_FILES = 3
SOFT_MAX = 4 * MiB  # files are kept under this, except in a "big" excursion
BIG_OFFSET = 64 * MiB  # rare writes land near here, leaving a large hole
HARD_MAX = BIG_OFFSET + 2 * MiB  # nothing ever grows past this
DATA_POOL = 16 * MiB
READ_CHUNK = 1 * MiB  # whole-file verification reads this much per call
MMAP_MAX = 256 * KiB  # largest range touched through one mapping
DOOMED_MAX = 4 * MiB  # most bytes read back before they are overwritten / cut
DIRS = ("", "sub", "sub/deep")  # relative to the root; files move among them

# Offsets worth hitting on both sides: pages, pluto's 2 KiB inline-file limit,
# Merkle leaves, chunker min / average sizes, 1 MiB segments, the soft cap.
BOUNDARIES = (
    0, 2 * KiB, 4 * KiB, 8 * KiB, 16 * KiB, 64 * KiB, 128 * KiB,
    512 * KiB, 1 * MiB, 2 * MiB, 3 * MiB, 4 * MiB,
)

DEFAULT_OPS = 12_000
DEFAULT_VERIFY_EVERY = 500


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw, 0) if raw else default


def _memset0(buf: bytearray, start: int, n: int) -> None:
    """Zeroes buf[start:start+n] in place (60 MiB in ~5 ms; slice copies take ~100)."""
    if n > 0:
        assert start + n <= len(buf)
        ref = ctypes.c_char.from_buffer(buf, start)
        ctypes.memset(ctypes.addressof(ref), 0, n)
        del ref  # releases the buffer export, so buf can grow again


def _hex(b: bytes | bytearray) -> str:
    return bytes(b).hex(" ") if b else "(none)"


class Model:
    """A file's expected content: `size` bytes of a buffer that only grows.

    Bytes of the buffer past `size` are kept zero, so a file that goes out to
    64 MiB and back reuses the memory (a memset) instead of faulting in a
    fresh 64 MiB every time.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(self.size)
        assert step == 1
        return bytes(memoryview(self.buf)[start:max(start, stop)])

    def byte(self, i: int) -> int:
        assert 0 <= i < self.size
        return self.buf[i]

    def _grow(self, n: int) -> None:
        if n > len(self.buf):
            self.buf.extend(bytes(n - len(self.buf)))

    def write(self, off: int, data: bytes) -> None:
        end = off + len(data)
        self._grow(end)
        self.buf[off:end] = data
        self.size = max(self.size, end)

    def resize(self, n: int) -> None:
        if n < self.size:
            _memset0(self.buf, n, self.size - n)
        else:
            self._grow(n)
        self.size = n


@dataclass
class TrackedFile:
    label: str
    rel: str  # path relative to the root; changes on rename
    fd: int
    model: Model
    big_left: int = 0  # ops left before a big (sparse) file is shrunk back


class Fsx:
    """The random-operation engine: real files, their models, the checks."""

    def __init__(self, root: Path, seed: int, n_ops: int, verify_every: int) -> None:
        self.root = root
        self.seed = seed
        self.n_ops = n_ops
        self.verify_every = max(1, verify_every)
        self.rng = random.Random(seed)
        # Random bytes are mostly slices of this pool at random offsets: much
        # faster than fresh randbytes, and still unlike any other write.
        self.pool = self.rng.randbytes(DATA_POOL)
        self.opno = 0
        self.cur = "setup"
        self.log: collections.deque[str] = collections.deque(maxlen=30)
        self.counts: collections.Counter[str] = collections.Counter()
        self.names = 0  # counter for fresh, never reused file names
        self.files: list[TrackedFile] = []
        for d in DIRS[1:]:
            (root / d).mkdir()
        for i in range(N_FILES):
            rel = self._fresh_name("", f"f{i}")
            fd = os.open(root / rel, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.files.append(TrackedFile(f"f{i}", rel, fd, Model()))
        # (name, weight, needs a non-empty file)
        self.ops: list[tuple[str, float, bool]] = [
            ("pwrite", 18, False),
            ("write_seek", 6, False),
            ("append", 2, False),
            ("pread", 18, False),
            ("read_seek", 5, False),
            ("truncate", 3, False),
            ("ftruncate", 3, False),
            ("mmap_read", 6, True),
            ("mmap_write", 6, True),
            ("reopen", 2, False),
            ("fsync", 1, False),
            ("second_fd", 3, False),
            ("rename", 2, False),
            ("copy_from_other", 3, False),
            ("stat", 2, False),
            ("big_write", 0.1, False),
        ]
        self.op_names = [o[0] for o in self.ops]
        self.cum_weights: list[float] = []
        total = 0.0
        for _, w, _ in self.ops:
            total += w
            self.cum_weights.append(total)
        self.needs_data = {name for name, _, nd in self.ops if nd}

    # ----- reporting -------------------------------------------------------

    def error(self, what: str) -> AssertionError:
        recent = "\n    ".join(self.log) or "(none)"
        return AssertionError(
            f"fsx failure at {self.cur}\n  {what}\n"
            f"  seed={self.seed}; reproduce with PLUTO_FSX_SEED={self.seed} "
            f"PLUTO_FSX_OPS={self.n_ops} PLUTO_FSX_VERIFY_EVERY={self.verify_every}\n"
            f"  last operations (oldest first):\n    {recent}"
        )

    def begin(self, name: str, f: TrackedFile, **details: object) -> None:
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        self.cur = f"op #{self.opno} {name} {f.label} ({f.rel}, size {len(f.model)}) {extra}".rstrip()
        self.log.append(self.cur)
        self.counts[name] += 1

    def compare(self, got: bytes, want: bytes | bytearray, off: int, what: str) -> None:
        """Exact equality of `got` (read at file offset `off`) with the model."""
        if got == want:
            return
        n = min(len(got), len(want))
        i = 0
        step = 4096
        while i < n and got[i : i + step] == want[i : i + step]:
            i += step
        while i < n and got[i] == want[i]:
            i += 1
        lo = max(0, i - 8)
        if i < n:
            first = f"got 0x{got[i]:02x}, expected 0x{want[i]:02x}"
        elif len(got) < len(want):
            first = f"read ended early, expected 0x{want[i]:02x}"
        else:
            first = f"got 0x{got[i]:02x} past the expected end"
        raise self.error(
            f"{what}: offset={off} length={len(want)}: first differing byte at file offset "
            f"{off + i} (byte {i} of the range): {first}; returned {len(got)} bytes, "
            f"expected {len(want)}\n"
            f"  got      [{off + lo}..]: {_hex(got[lo : i + 8])}\n"
            f"  expected [{off + lo}..]: {_hex(want[lo : i + 8])}"
        )

    def expect(self, got: object, want: object, what: str) -> None:
        if got != want:
            raise self.error(f"{what}: got {got!r}, expected {want!r}")

    # ----- helpers ---------------------------------------------------------

    def path(self, f: TrackedFile) -> Path:
        return self.root / f.rel

    def _fresh_name(self, d: str, stem: str) -> str:
        self.names += 1
        name = f"{stem}.{self.names}"
        return f"{d}/{name}" if d else name

    def cap(self, f: TrackedFile) -> int:
        return HARD_MAX if len(f.model) > SOFT_MAX else SOFT_MAX

    def pick_len(self, limit: int = 1 * MiB) -> int:
        r = self.rng.random()
        if r < 0.30:
            n = self.rng.randint(1, 64)
        elif r < 0.65:
            n = self.rng.randint(1, 4 * KiB)
        elif r < 0.96:
            n = self.rng.randint(1, 128 * KiB)
        else:
            n = self.rng.randint(128 * KiB, 1 * MiB)
        return max(1, min(n, limit))

    def pick_offset(self, size: int) -> int:
        r = self.rng.random()
        if r < 0.45 and size > 0:
            return self.rng.randrange(size)
        if r < 0.60:  # around EOF
            return max(0, size + self.rng.randint(-4 * KiB, 64))
        if r < 0.75:  # around a boundary or a page edge
            if size > 4 * KiB and self.rng.random() < 0.5:
                base = self.rng.randrange(size // (4 * KiB) + 1) * 4 * KiB
            else:
                base = self.rng.choice(BOUNDARIES)
            return max(0, base + self.rng.randint(-3, 3))
        if r < 0.85:
            return self.rng.randrange(4 * KiB)
        return size + self.rng.randint(1, 512 * KiB)  # past EOF: a hole

    def write_range(self, f: TrackedFile, limit: int = 1 * MiB) -> tuple[int, int]:
        cap = self.cap(f)
        n = self.pick_len(limit)
        off = self.pick_offset(len(f.model))
        if off + n > cap:
            off = self.rng.randrange(cap - n + 1)
        return off, n

    def read_range(self, f: TrackedFile, limit: int = 1 * MiB) -> tuple[int, int]:
        size = len(f.model)
        n = self.pick_len(limit)
        r = self.rng.random()
        if size == 0 or r < 0.05:
            off = size + self.rng.randint(0, 8 * KiB)  # at or past EOF: short/empty read
        elif r < 0.20:
            off = max(0, size - self.rng.randint(1, n))  # straddles EOF
        elif r < 0.35:
            off = max(0, self.rng.choice(BOUNDARIES) + self.rng.randint(-3, 3))
        else:
            off = self.rng.randrange(size)
        return off, n

    def new_size(self, f: TrackedFile) -> int:
        size = len(f.model)
        r = self.rng.random()
        if r < 0.10:
            n = self.rng.randint(0, 4 * KiB)  # across the small / inline sizes
        elif r < 0.40:
            n = size - self.rng.randint(0, min(size, 64 * KiB))  # trim the tail
        elif r < 0.50:
            n = self.rng.randint(0, size)  # down, anywhere
        elif r < 0.80:
            n = size + self.rng.randint(0, 512 * KiB)  # up
        elif r < 0.95:
            n = max(0, self.rng.choice(BOUNDARIES) + self.rng.randint(-3, 3))
        else:
            n = self.rng.choice((0, size))
        return min(n, self.cap(f))

    def data(self, n: int) -> bytes:
        r = self.rng.random()
        if r < 0.60:
            a = self.rng.randrange(DATA_POOL - n + 1)
            return self.pool[a : a + n]
        if r < 0.70:
            return self.rng.randbytes(n)
        if r < 0.80:
            return bytes(n)
        if r < 0.90:
            return bytes([self.rng.randrange(256)]) * n
        block = self.rng.randbytes(min(n, 4 * KiB))
        return (block * (n // len(block) + 1))[:n]

    def check_fsize(self, f: TrackedFile, fd: int | None = None) -> None:
        self.expect(os.fstat(f.fd if fd is None else fd).st_size, len(f.model), "fstat st_size")

    def check_psize(self, f: TrackedFile) -> None:
        self.expect(os.stat(self.path(f)).st_size, len(f.model), f"os.stat({f.rel}).st_size")

    def check_range(self, f: TrackedFile, off: int, n: int, what: str, fd: int | None = None) -> None:
        got = os.pread(f.fd if fd is None else fd, n, off)
        self.compare(got, f.model[off : off + n], off, what)

    def check_doomed(self, f: TrackedFile, off: int, n: int, why: str) -> None:
        """Reads bytes that are about to be overwritten or cut off (at most the
        last DOOMED_MAX of them), so a bad earlier write is still caught when
        its data would not have lived until the next whole-file read."""
        end = min(off + n, len(f.model))
        off = max(off, end - DOOMED_MAX)
        if end > off:
            self.check_range(f, off, end - off, f"read of bytes about to be {why}")

    def check_random_range(self, f: TrackedFile, what: str, fd: int | None = None) -> None:
        off, n = self.read_range(f)
        self.check_range(f, off, n, what, fd)

    # ----- operations ------------------------------------------------------

    def op_pwrite(self, f: TrackedFile) -> None:
        off, n = self.write_range(f)
        data = self.data(n)
        self.begin("pwrite", f, offset=off, length=n)
        self.check_doomed(f, off, n, "overwritten")
        self.expect(os.pwrite(f.fd, data, off), n, "pwrite return value")
        f.model.write(off, data)
        self.check_fsize(f)

    def op_write_seek(self, f: TrackedFile) -> None:
        off, n = self.write_range(f)
        data = self.data(n)
        self.begin("write_seek", f, offset=off, length=n)
        self.check_doomed(f, off, n, "overwritten")
        self.expect(os.lseek(f.fd, off, os.SEEK_SET), off, "lseek return value")
        self.expect(os.write(f.fd, data), n, "write return value")
        self.expect(os.lseek(f.fd, 0, os.SEEK_CUR), off + n, "file position after write")
        f.model.write(off, data)
        self.expect(os.lseek(f.fd, 0, os.SEEK_END), len(f.model), "lseek(SEEK_END)")

    def op_append(self, f: TrackedFile) -> None:
        n = self.pick_len(min(256 * KiB, self.cap(f) - len(f.model)))
        if len(f.model) + n > self.cap(f):
            n = 0
        data = self.data(n) if n else b""
        self.begin("append", f, offset=len(f.model), length=n)
        fd2 = os.open(self.path(f), os.O_WRONLY | os.O_APPEND)
        try:
            self.expect(os.write(fd2, data), n, "O_APPEND write return value")
        finally:
            os.close(fd2)
        old = len(f.model)
        f.model.write(old, data)
        self.check_fsize(f)
        lo = max(0, old - 16)
        self.check_range(f, lo, len(f.model) - lo, "read after O_APPEND write")

    def op_pread(self, f: TrackedFile) -> None:
        off, n = self.read_range(f)
        self.begin("pread", f, offset=off, length=n)
        self.check_range(f, off, n, "pread")

    def op_read_seek(self, f: TrackedFile) -> None:
        off, n = self.read_range(f)
        self.begin("read_seek", f, offset=off, length=n)
        self.expect(os.lseek(f.fd, off, os.SEEK_SET), off, "lseek return value")
        got = os.read(f.fd, n)
        self.compare(got, f.model[off : off + n], off, "lseek+read")
        self.expect(os.lseek(f.fd, 0, os.SEEK_CUR), off + len(got), "file position after read")

    def _resize(self, f: TrackedFile, name: str, n: int) -> None:
        old = len(f.model)
        self.begin(name, f, old_size=old, new_size=n)
        self.check_doomed(f, n, old - n, "cut off")
        if name == "ftruncate":
            os.ftruncate(f.fd, n)
        else:
            os.truncate(self.path(f), n)
        f.model.resize(n)
        self.check_fsize(f)
        self.check_psize(f)
        # The bytes around both the old and the new end: no stale data after a
        # shrink, zeros after a grow, nothing past the new end.
        for edge in {old, n}:
            lo = max(0, edge - 64)
            self.check_range(f, lo, 192, f"read around offset {edge} after {name}")

    def op_truncate(self, f: TrackedFile) -> None:
        self._resize(f, "truncate", self.new_size(f))

    def op_ftruncate(self, f: TrackedFile) -> None:
        self._resize(f, "ftruncate", self.new_size(f))

    def op_shrink(self, f: TrackedFile) -> None:
        """Ends a big excursion: back under the soft cap."""
        name = self.rng.choice(("truncate", "ftruncate"))
        self._resize(f, name, self.rng.randrange(SOFT_MAX))
        self.counts["shrink"] += 1

    def _mmap_range(self, f: TrackedFile) -> tuple[int, int, int, int]:
        size = len(f.model)
        off = self.rng.randrange(size)
        n = min(self.pick_len(MMAP_MAX), size - off)
        map_off = off - off % mmap.ALLOCATIONGRANULARITY
        return off, n, map_off, off + n - map_off

    def op_mmap_read(self, f: TrackedFile) -> None:
        off, n, map_off, map_len = self._mmap_range(f)
        self.begin("mmap_read", f, offset=off, length=n)
        with mmap.mmap(f.fd, map_len, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=map_off) as mm:
            got = mm[off - map_off : off - map_off + n]
        self.compare(got, f.model[off : off + n], off, "mmap read")

    def op_mmap_write(self, f: TrackedFile) -> None:
        off, n, map_off, map_len = self._mmap_range(f)
        data = self.data(n)
        # Mostly msync'd; the rest are left dirty in the page cache for a later
        # read, truncate, fsync or close to deal with (each msync is a sync, and
        # on a network filesystem possibly an upload).
        sync = self.rng.random() < 0.6
        self.begin("mmap_write", f, offset=off, length=n, msync=sync)
        self.check_doomed(f, off, n, "overwritten")
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        with mmap.mmap(f.fd, map_len, flags=mmap.MAP_SHARED, prot=prot, offset=map_off) as mm:
            mm[off - map_off : off - map_off + n] = data
            if sync:
                mm.flush()  # msync(MS_SYNC) of the whole mapping
        f.model.write(off, data)
        self.check_fsize(f)
        self.check_range(f, max(0, off - 16), n + 32, "pread after mmap write")

    def op_reopen(self, f: TrackedFile) -> None:
        trunc = self.rng.random() < 0.25
        self.begin("reopen", f, o_trunc=trunc)
        if trunc:
            self.check_doomed(f, 0, len(f.model), "cut off by O_TRUNC")
        os.close(f.fd)
        f.fd = -1
        f.fd = os.open(self.path(f), os.O_RDWR | (os.O_TRUNC if trunc else 0))
        if trunc:
            f.model.resize(0)
        self.check_fsize(f)
        self.check_random_range(f, "pread after reopen")

    def op_fsync(self, f: TrackedFile) -> None:
        data_only = self.rng.random() < 0.5
        self.begin("fdatasync" if data_only else "fsync", f)
        (os.fdatasync if data_only else os.fsync)(f.fd)
        self.check_fsize(f)

    def op_second_fd(self, f: TrackedFile) -> None:
        self.begin("second_fd", f)
        fd2 = os.open(self.path(f), os.O_RDWR)
        try:
            self.check_fsize(f, fd2)
            for _ in range(2):
                off, n = self.read_range(f)
                self.cur = f"op #{self.opno} second_fd {f.label} ({f.rel}) read offset={off} length={n}"
                self.check_range(f, off, n, "pread through a second fd", fd2)
            if self.rng.random() < 0.4:
                off, n = self.write_range(f, 128 * KiB)
                data = self.data(n)
                self.cur = f"op #{self.opno} second_fd {f.label} ({f.rel}) write offset={off} length={n}"
                self.log.append(self.cur)
                self.check_doomed(f, off, n, "overwritten")
                self.expect(os.pwrite(fd2, data, off), n, "pwrite through a second fd")
                f.model.write(off, data)
                self.check_fsize(f)
                self.check_range(f, max(0, off - 16), n + 32, "first fd reading a second fd's write")
        finally:
            os.close(fd2)

    def op_rename(self, f: TrackedFile) -> None:
        cur_dir = os.path.dirname(f.rel)
        r = self.rng.random()
        decoy_size = -1
        if r < 0.45:
            new = self._fresh_name(cur_dir, f.label)
        elif r < 0.80:
            new = self._fresh_name(self.rng.choice([d for d in DIRS if d != cur_dir]), f.label)
        else:  # over an existing file, which it must replace
            new = self._fresh_name(self.rng.choice(DIRS), "decoy")
            decoy_size = self.rng.randint(0, 8 * KiB)
        old = f.rel
        self.begin("rename", f, to=new, over_existing=decoy_size >= 0)
        if decoy_size >= 0:
            (self.root / new).write_bytes(self.rng.randbytes(decoy_size))
        os.rename(self.root / old, self.root / new)
        f.rel = new
        self.expect(os.path.lexists(self.root / old), False, f"old name {old} still exists after rename")
        self.check_psize(f)
        self.check_fsize(f)
        self.check_random_range(f, "pread through the open fd after rename")
        fd2 = os.open(self.path(f), os.O_RDONLY)
        try:
            self.check_fsize(f, fd2)
            self.check_random_range(f, "pread by the new path after rename", fd2)
        finally:
            os.close(fd2)

    def op_copy_from_other(self, f: TrackedFile) -> None:
        srcs = [s for s in self.files if s is not f and s.model]
        if not srcs:
            return self.op_pwrite(f)
        src = self.rng.choice(srcs)
        size = len(src.model)
        if self.rng.random() < 0.1:  # whole chunks' worth
            n = self.rng.randint(512 * KiB, 2 * MiB)
        else:
            n = self.pick_len()
        n = min(n, size, self.cap(f))
        a = self.rng.randrange(size - n + 1)
        off = a if self.rng.random() < 0.5 else self.pick_offset(len(f.model))
        if off + n > self.cap(f):
            off = self.rng.randrange(self.cap(f) - n + 1)
        data = src.model[a : a + n]
        self.begin("copy_from_other", f, src=src.label, src_offset=a, offset=off, length=n)
        self.check_doomed(f, off, n, "overwritten")
        self.expect(os.pwrite(f.fd, data, off), n, "pwrite return value")
        f.model.write(off, data)
        self.check_fsize(f)

    def op_stat(self, f: TrackedFile) -> None:
        self.begin("stat", f)
        self.check_fsize(f)
        self.check_psize(f)
        self.expect(os.lseek(f.fd, 0, os.SEEK_END), len(f.model), "lseek(SEEK_END)")

    def op_big_write(self, f: TrackedFile) -> None:
        old = len(f.model)
        off = BIG_OFFSET + self.rng.randint(-256 * KiB, 256 * KiB)
        n = self.rng.randint(1, 128 * KiB)
        data = self.data(n)
        self.begin("big_write", f, offset=off, length=n)
        self.check_doomed(f, off, n, "overwritten")
        self.expect(os.pwrite(f.fd, data, off), n, "pwrite return value")
        f.model.write(off, data)
        f.big_left = self.rng.randint(5, 40)
        self.check_fsize(f)
        self.check_range(f, max(0, off - 64), n + 128, "read back of a write near 64 MiB")
        if off > old:  # somewhere inside the hole just made
            h = self.rng.randrange(old, off)
            self.check_range(f, h, min(64 * KiB, off - h), "read inside a hole")

    # ----- verification ----------------------------------------------------

    def expected_listing(self) -> dict[str, set[str]]:
        want: dict[str, set[str]] = {d: set() for d in DIRS}
        for d in DIRS[1:]:
            parent, _, name = d.rpartition("/")
            want[parent].add(name)
        for f in self.files:
            d, _, name = f.rel.rpartition("/")
            want[d].add(name)
        return want

    def verify_listing(self) -> None:
        for d, names in self.expected_listing().items():
            self.expect(set(os.listdir(self.root / d)), names, f"listing of {d or '.'}")

    def verify_file(self, f: TrackedFile, what: str) -> None:
        """Reads the whole file through a fresh fd and compares it with the model."""
        self.check_psize(f)
        fd = os.open(self.path(f), os.O_RDONLY)
        try:
            self.check_fsize(f, fd)
            size = len(f.model)
            off = 0
            while off < size:
                got = os.pread(fd, READ_CHUNK, off)
                self.compare(got, f.model[off : off + READ_CHUNK], off, what)
                off += READ_CHUNK
            self.expect(os.pread(fd, 1, size), b"", f"{what}: read at EOF")
        finally:
            os.close(fd)

    def verify_all(self, what: str) -> None:
        self.verify_listing()
        for f in self.files:
            self.cur = f"{what} after op #{self.opno}, {f.label} ({f.rel}, size {len(f.model)})"
            self.verify_file(f, what)

    # ----- driver ----------------------------------------------------------

    def step(self) -> None:
        f = self.files[self.rng.randrange(len(self.files))]
        if len(f.model) > SOFT_MAX:
            f.big_left -= 1
            if f.big_left <= 0:
                self.op_shrink(f)
                return
        while True:
            name = self.rng.choices(self.op_names, cum_weights=self.cum_weights)[0]
            if f.model or name not in self.needs_data:
                break
        getattr(self, f"op_{name}")(f)

    def run(self) -> None:
        for opno in range(1, self.n_ops + 1):
            self.opno = opno
            self.cur = f"op #{self.opno}"
            try:
                self.step()
                if self.opno % self.verify_every == 0:
                    self.verify_all("periodic whole-file read")
            except AssertionError:
                raise
            except Exception as e:
                raise self.error(f"{type(e).__name__}: {e}") from e

    def close_all(self) -> None:
        for f in self.files:
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1

    def final_check(self) -> None:
        self.cur = f"final check after op #{self.opno} (all fds closed)"
        try:
            self.close_all()
            self.verify_all("final read from a fresh open")
        except AssertionError:
            raise
        except Exception as e:
            raise self.error(f"{type(e).__name__}: {e}") from e


DEFAULT_SEED = 20261125


def _seed() -> int:
    # A fixed default keeps CI reproducible; PLUTO_FSX_SEED=random explores new sequences.
    raw = os.environ.get("PLUTO_FSX_SEED", "").strip()
    if raw == "random":
        return random.SystemRandom().randrange(2**32)
    return int(raw, 0) if raw else DEFAULT_SEED


@pytest.mark.timeout(1800)
def test_random_operations_match_the_model(fs_dir: Path) -> None:
    seed = _seed()
    n_ops = _env_int("PLUTO_FSX_OPS", DEFAULT_OPS)
    verify_every = _env_int("PLUTO_FSX_VERIFY_EVERY", DEFAULT_VERIFY_EVERY)
    print(f"pluto fsx: PLUTO_FSX_SEED={seed} PLUTO_FSX_OPS={n_ops} PLUTO_FSX_VERIFY_EVERY={verify_every}")
    fsx = Fsx(fs_dir, seed, n_ops, verify_every)
    t0 = time.monotonic()
    try:
        fsx.run()
        fsx.final_check()
    finally:
        fsx.close_all()
    print(f"pluto fsx: {n_ops} ops in {time.monotonic() - t0:.2f} s; {dict(sorted(fsx.counts.items()))}")
    print(f"pluto fsx: final sizes {[len(f.model) for f in fsx.files]}")
    if n_ops >= DEFAULT_OPS:  # the mix really ran: no kind of operation starved
        kinds = set(fsx.op_names) | {"fdatasync"}
        missing = sorted(k for k in kinds if fsx.counts[k] == 0)
        assert missing == [], f"seed={seed}: operations never run: {missing}; counts {dict(fsx.counts)}"


def test_the_checker_reports_a_corrupted_byte(tmp_path: Path) -> None:
    """The harness itself: a byte changed behind the model's back is caught and located."""
    root = tmp_path / "fs"
    root.mkdir()
    fsx = Fsx(root, seed=7, n_ops=300, verify_every=10_000)
    try:
        fsx.run()
        f = max(fsx.files, key=lambda x: len(x.model))
        assert len(f.model) > 0
        pos = len(f.model) // 2
        bad = f.model.byte(pos) ^ 0x5A
        os.pwrite(f.fd, bytes([bad]), pos)
        with pytest.raises(AssertionError) as info:
            fsx.verify_all("whole-file read")
    finally:
        fsx.close_all()
    msg = str(info.value)
    assert f"first differing byte at file offset {pos} " in msg
    assert f"got 0x{bad:02x}, expected 0x{f.model.byte(pos):02x}" in msg
    assert "seed=7" in msg and "PLUTO_FSX_SEED=7" in msg
    assert "op #300" in msg
