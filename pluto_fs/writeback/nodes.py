"""The mount's inodes: files, symlinks and folders as the FUSE layer and the write-back see them.

Besides what stat(2) shows, every node keeps what merging several writers
needs (docs/MOUNT.md, "Several writers"): the version vector of its entry as
this device last sent or received it (`vv`), whether its entry changed since
(`changed`), and whether the folder on the network has an entry for it at its
current name (`on_network`), which decides whether removing it leaves a
tombstone.
"""

from __future__ import annotations

import stat
import time
from dataclasses import dataclass, field

import trio

from cryptree.caps import ReadCap, WriteCap
from cryptree.dirnode import DirEntry, Tombstone
from cryptree.filenode import FileContent
from cryptree.versions import Version


def now_ns() -> int:
    """The current time in integer nanoseconds."""
    return time.time_ns()


@dataclass(eq=False)
class Node:
    """Common attributes of every inode."""

    ino: int
    name: str
    parent: DirNode | None
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    xattrs: dict[str, bytes] = field(default_factory=dict)
    lookups: int = 0  # references the kernel holds (lookup replies minus forgets)
    vv: Version = ()  # version of this name's entry as last sent or received (cryptree/versions.py)
    changed: bool = False  # the entry changed since: the next publish sends it with a new version
    on_network: bool = False  # the network's folder has an entry for this node at its current name
    edits: int = 0  # bumps on every change of the entry: a publish that raced a change leaves it changed

    @property
    def writable(self) -> bool:
        """Whether this node's containing directory can be changed by us."""
        return self.parent is None or isinstance(self.parent.cap, WriteCap)


@dataclass(eq=False)
class FileNode(Node):
    """A regular file: published content, plus possibly a local full copy."""

    content: FileContent | None = None  # what the network holds (None: nothing yet)
    content_size: int = 0  # the size that goes with `content`
    content_mtime_ns: int = 0  # the mtime that goes with `content` (published while new bytes upload)
    # The version under which `content` is published at this name while newer bytes upload
    # (None: not sent at this name yet, so it needs a fresh one).
    held_vv: Version | None = None
    size: int = 0  # the current size (of the local copy when there is one)
    cache_id: str | None = None  # local cache file with the file's full current bytes
    dirty: bool = False  # the cache file holds bytes the network does not have yet
    version: int = 0  # bumps on every data change (an upload of an older version is stale)
    open_handles: int = 0
    writers: int = 0
    last_write: float = 0.0


@dataclass(eq=False)
class SymlinkNode(Node):
    """A symbolic link."""

    target: bytes = b""


@dataclass(eq=False)
class DirNode(Node):
    """A directory: its capability and, once loaded, its children."""

    cap: WriteCap | ReadCap | None = None
    children: dict[str, Node] | None = None
    tombstones: dict[str, Tombstone] = field(default_factory=dict)  # names deleted lately (merging needs them)
    # What the network last had under a name whose node was replaced by one not publishable yet (a
    # file renamed over it whose bytes are still uploading): published in its place meanwhile, so
    # the name never goes empty on the network (publish_plan.py).
    shadows: dict[str, DirEntry] = field(default_factory=dict)
    seq: int = 0  # the version of the folder's slot that the children derive from
    refreshed: float = -1e9  # trio time the folder was last read from the network
    new: bool = False  # never published
    dirty: bool = False
    version: int = 0
    publish_lock: trio.Lock = field(default_factory=trio.Lock)
    load_lock: trio.Lock = field(default_factory=trio.Lock)
    # The journal generation in which this folder's entry rows were last known to mirror
    # `children` (a rollback changes the generation): then one changed entry is all a change
    # writes. None: the rows must be written whole first.
    journal_gen: int | None = None
    # (generation, folder row) last written with dirty=1, so an unchanged row is not written again.
    journal_row: tuple[int, int, bool, bytes] | None = None
    _cap_text: tuple[WriteCap | ReadCap, str] | None = None

    def cap_text(self) -> str:
        """The capability as a string, encoded once (base32 of a cap is not cheap)."""
        assert self.cap is not None
        if self._cap_text is None or self._cap_text[0] is not self.cap:
            self._cap_text = (self.cap, self.cap.to_string())
        return self._cap_text[1]


def is_ready(node: Node) -> bool:
    """Whether the node's current state can be published (its data and its folder are on the network)."""
    if isinstance(node, FileNode):
        return not node.dirty and node.content is not None
    if isinstance(node, DirNode):
        return not node.new
    return True


def mode_of(node: Node) -> int:
    """st_mode for a node."""
    if isinstance(node, DirNode):
        return stat.S_IFDIR | node.mode
    if isinstance(node, SymlinkNode):
        return stat.S_IFLNK | 0o777
    return stat.S_IFREG | node.mode


class InodeTable:
    """Every inode the mount knows, by number. Numbers are never reused while the mount runs."""

    def __init__(self, root: DirNode) -> None:
        self._nodes: dict[int, Node] = {root.ino: root}
        self._next = root.ino + 1

    def new_ino(self) -> int:
        """A number no inode of this mount had before."""
        ino = self._next
        self._next += 1
        return ino

    def add(self, node: Node) -> None:
        """Make `node` reachable by its number."""
        self._nodes[node.ino] = node

    def get(self, ino: int) -> Node | None:
        """The inode numbered `ino`, or None if the mount has none (any more)."""
        return self._nodes.get(ino)

    def drop(self, ino: int) -> None:
        """Forget inode `ino` (nothing refers to it any more)."""
        self._nodes.pop(ino, None)

    def __len__(self) -> int:
        return len(self._nodes)
