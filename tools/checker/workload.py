"""The workload: a small namespace, a seeded plan of operations, and self-describing file contents.

Paths are strings relative to the mount's root, without a leading slash
("" is the root, "a/m0-s1/m0-f0" a file). Every mount writes only names
with its own prefix (m0-, m1-) so two writers never touch the same name,
while both keep changing the same folders: the root and the shared folders
a, b and c.

The plan is made from the seed alone: the generator simulates an ideal run
(every operation succeeds) to pick plausible targets, so the same seed gives
the same list of operations whatever happens at run time. Operations that
no longer make sense when they run (a rename of a file a failed create never
made) simply fail, and a failed operation acknowledges nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

SHARED = ("a", "b", "c")  # folders both mounts write in (made at setup)
SETUP_FILE = "seed"  # written and fsync'd in each shared folder at setup, never touched again
ROOT_FILES = 2
FOLDER_FILES = 3
SUBDIRS = 2
SUBDIR_FILES = 2

SMALL = (16, 3000)  # bytes of filler: stored inline in the folder entry
LARGE = (64 << 10, 600 << 10)  # stored in packs, so erasure coding and placement are exercised
LARGE_SHARE = 0.2

# Operation kinds and their weights in the mix.
WEIGHTS = {
    "write": 22,  # create or overwrite (O_TRUNC) with new content, often fsync'd before close
    "append": 12,  # read the whole file, append a segment, sometimes fsync
    "rename": 12,  # a file, within a folder or between folders, maybe over an existing file
    "unlink": 7,
    "mkdir": 6,
    "rmdir": 4,  # of a folder the plan thinks empty (fails harmlessly if it is not)
    "fsync_file": 10,  # read the file, then fsync it: acknowledges exactly what was read
    "fsync_dir": 13,  # list the folder, then fsync it: acknowledges the names listed
    "read": 7,
    "list": 7,
}


def split(path: str) -> tuple[str, str]:
    """(parent folder, name) of a path; the parent of a top-level name is ""."""
    parent, _, name = path.rpartition("/")
    return parent, name


def join(folder: str, name: str) -> str:
    """The path of `name` inside `folder`."""
    return f"{folder}/{name}" if folder else name


def ancestors(path: str) -> list[str]:
    """Every folder above `path`, nearest first, ending with the root ""."""
    out = []
    while path:
        path, _ = split(path)
        out.append(path)
    return out


@dataclass(frozen=True)
class Namespace:
    """The names one mount may write: a few files in the root, in each shared folder and in each of
    its own subfolders of the shared folders."""

    mount: int

    @property
    def prefix(self) -> str:
        """The prefix of every name this mount owns."""
        return f"m{self.mount}-"

    def subdirs(self) -> list[str]:
        """This mount's own subfolders (made and removed by the workload)."""
        return [join(f, f"{self.prefix}s{i}") for f in SHARED for i in range(SUBDIRS)]

    def folders(self) -> list[str]:
        """Every folder this mount writes names into."""
        return ["", *SHARED, *self.subdirs()]

    def files_in(self, folder: str) -> list[str]:
        """The file paths this mount may create in `folder`."""
        count = ROOT_FILES if folder == "" else FOLDER_FILES if folder in SHARED else SUBDIR_FILES
        return [join(folder, f"{self.prefix}f{i}") for i in range(count)]

    def names_in(self, folder: str) -> list[str]:
        """Paths of this mount's files and subfolders directly inside `folder`."""
        return self.files_in(folder) + [d for d in self.subdirs() if split(d)[0] == folder]

    def files(self) -> list[str]:
        """Every file path this mount may write."""
        return [p for f in self.folders() for p in self.files_in(f)]

    def paths(self) -> list[str]:
        """Every path this mount owns (its subfolders and files)."""
        return self.subdirs() + self.files()

    def owns(self, path: str) -> bool:
        """True if `path` (or a folder above it) is this mount's."""
        return any(part.startswith(self.prefix) for part in path.split("/"))


def setup_paths() -> list[str]:
    """The paths made at setup, before any fault: the shared folders and one fsync'd file in each."""
    return [*SHARED, *(join(f, SETUP_FILE) for f in SHARED)]


@dataclass(frozen=True)
class Op:
    """One planned operation of one mount."""

    id: str  # unique in the run: "m0.17"; the content it writes carries this id
    mount: int
    kind: str
    path: str
    dest: str = ""  # rename: the new path
    size: int = 0  # write/append: bytes of filler after the segment header
    fsync: bool = False  # write/append: fsync before close
    extra: int = 0  # write: bytes appended after the fsync and never synced (0: none)

    def describe(self) -> str:
        """A short human description, as the report shows it."""
        what = f"{self.kind} {self.path or '/'}"
        if self.dest:
            what += f" -> {self.dest}"
        if self.size:
            fsync = ", fsync" if self.fsync else ""
            extra = f", then +{self.extra} B unsynced" if self.extra else ""
            what += f" ({self.size} B{fsync}{extra})"
        elif self.fsync:
            what += " (fsync)"
        return what


def plan(seed: int, mount: int, count: int) -> Iterator[Op]:
    """`count` operations for `mount`, from `seed` alone, made as they are consumed (a run that ends at
    --minutes never plans the 100,000 operations it was allowed)."""
    rng = random.Random(f"pluto-checker/{seed}/ops/m{mount}")
    ns = Namespace(mount)
    files: set[str] = set()  # what an ideal run would have now
    dirs: set[str] = set()
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    def folders() -> list[str]:
        return ["", *SHARED, *sorted(dirs)]

    def some_file(existing: bool) -> str:
        pool = sorted(files) if existing and files else [p for f in folders() for p in ns.files_in(f)]
        return rng.choice(pool)

    def size() -> int:
        lo, hi = LARGE if rng.random() < LARGE_SHARE else SMALL
        return rng.randint(lo, hi)

    for index in range(count):
        op_id = f"m{mount}.{index}"
        kind = rng.choices(kinds, weights)[0]
        if kind == "write":
            path = some_file(existing=rng.random() < 0.5)
            fsync = rng.random() < 0.6
            extra = rng.randint(*SMALL) if fsync and rng.random() < 0.15 else 0
            op = Op(op_id, mount, kind, path, size=size(), fsync=fsync, extra=extra)
            files.add(path)
        elif kind == "append":
            op = Op(op_id, mount, kind, some_file(existing=True), size=rng.randint(*SMALL), fsync=rng.random() < 0.4)
        elif kind == "rename":
            src = some_file(existing=True)
            same = rng.random() < 0.5
            folder = split(src)[0] if same else rng.choice(folders())
            dest = rng.choice([p for p in ns.files_in(folder) if p != src] or ns.files_in(""))
            op = Op(op_id, mount, kind, src, dest=dest)
            if src in files:
                files.discard(src)
                files.add(dest)
        elif kind == "unlink":
            op = Op(op_id, mount, kind, some_file(existing=True))
            files.discard(op.path)
        elif kind == "mkdir":
            op = Op(op_id, mount, kind, rng.choice(ns.subdirs()))
            dirs.add(op.path)
        elif kind == "rmdir":
            empty = [d for d in sorted(dirs) if not any(split(f)[0] == d for f in files)]
            op = Op(op_id, mount, kind, rng.choice(empty or ns.subdirs()))
            dirs.discard(op.path)
        elif kind in ("fsync_file", "read"):
            op = Op(op_id, mount, kind, some_file(existing=True))
        else:  # fsync_dir, list
            op = Op(op_id, mount, kind, rng.choice(folders()))
        yield op


# ---- contents ---------------------------------------------------------------------------
#
# A file's content is a sequence of segments, one per write or append that produced it:
# a header line naming the operation and the filler's length, then the filler (bytes
# drawn from the operation id). So any content read back names exactly which
# operations wrote it, in order, and a corrupted byte is noticed.

_HEADER = b"<<pluto-checker "


def segment(op_id: str, size: int) -> bytes:
    """The bytes operation `op_id` writes: its header and `size` bytes of filler."""
    return _HEADER + f"{op_id} {size}>>\n".encode() + random.Random(op_id).randbytes(size)


def decode(data: bytes) -> tuple[str, ...] | None:
    """The operation ids whose segments make up `data`, or None if it is not such a sequence."""
    ids: list[str] = []
    pos = 0
    while pos < len(data):
        if not data.startswith(_HEADER, pos):
            return None
        end = data.find(b">>\n", pos)
        if end < 0:
            return None
        try:
            op_id, size_text = data[pos + len(_HEADER) : end].decode().split(" ")
            size = int(size_text)
        except ValueError:
            return None
        seg_end = end + 3 + size
        if seg_end > len(data) or data[pos:seg_end] != segment(op_id, size):
            return None
        ids.append(op_id)
        pos = seg_end
    return tuple(ids)
