"""Deterministic test trees and a strict comparison of two trees."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

ODD_NAMES = ["naïve café.txt", "新しい文書", "emoji-🚀.bin", "line\nbreak", "tab\there", " leading space",
             "trailing space ", "-dash", "a" * 200, "quote'\"", "back\\slash", "UPPER.lower", "%percent%"]


def make_tree(root: Path, files: int, seed: int = 1, big: tuple[int, ...] = (64 << 20, 16 << 20)) -> int:
    """Write `files` files (mixed sizes, odd names, empties, symlinks) under `root`; return total bytes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root]
    for i in range(max(1, files // 50)):
        parent = rng.choice(dirs)
        d = parent / (f"dir{i}" if i % 7 else ODD_NAMES[i % len(ODD_NAMES)] + f"-d{i}")
        d.mkdir()
        dirs.append(d)
    total = 0
    sizes = list(big) + [rng.randint(1 << 20, 4 << 20) for _ in range(8)]
    for i in range(files):
        d = rng.choice(dirs)
        name = ODD_NAMES[i % len(ODD_NAMES)] + f"-{i}" if i % 11 == 0 else f"file{i}.dat"
        if i < len(sizes):
            size = sizes[i]
        elif i % 13 == 0:
            size = 0
        else:
            size = int(rng.paretovariate(1.2) * 2000) % (256 * 1024)
        # half compressible text, half random bytes
        data = rng.randbytes(size) if i % 2 else (f"line {i} of a text file\n" * (size // 24 + 1)).encode()[:size]
        (d / name).write_bytes(data)
        os.chmod(d / name, rng.choice([0o644, 0o600, 0o755, 0o444]))
        os.utime(d / name, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i * 1_000_000_000))
        total += size
    for i in range(20):
        d = rng.choice(dirs)
        target = rng.choice(["file1.dat", "../nowhere", "dir0", "/absolute/target", "новый"])
        os.symlink(target, d / f"link{i}")
    return total


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything that must survive a round trip: type, mode, mtime, content or link target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size, p.read_bytes())
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    """Fail with the first difference between two trees."""
    sa, sb = snapshot(a), snapshot(b)
    assert sorted(sa) == sorted(sb), f"names differ: {sorted(set(sa) ^ set(sb))[:5]}"
    for rel in sa:
        if sa[rel] != sb[rel]:
            raise AssertionError(f"{rel!r} differs: {sa[rel][:4]!r} vs {sb[rel][:4]!r}")
