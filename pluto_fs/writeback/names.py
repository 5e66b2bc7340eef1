"""What happens to a name in a folder when a node takes it or leaves it.

Merging several writers (folder_merge.py) needs more than the entries: a
name the network had and that was removed here is remembered as deleted (a
tombstone whose version descends from the entry's), and what the network had
there is kept as a shadow, published in place of a node renamed over it whose
bytes are still uploading (publish_plan.py). A node new at a name continues
the name's version history from its tombstone.
"""

from __future__ import annotations

import stat

from cryptree import versions
from cryptree.dirnode import DirEntry, Symlink, Tombstone
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, SymlinkNode, now_ns


def inherit(parent: DirNode, mode: int, gid: int, is_dir: bool) -> tuple[int, int]:
    """(mode, gid) of a new entry: a setgid directory passes on its group (and, to dirs, the bit)."""
    if parent.mode & stat.S_ISGID:
        return (mode | stat.S_ISGID if is_dir else mode), parent.gid
    return mode, gid


def take_name(d: DirNode, node: Node) -> None:
    """`node` is new at its name in `d`: its version descends from the name's tombstone, if any."""
    dead = d.tombstones.get(node.name)
    node.vv, node.on_network = (dead.version if dead is not None else ()), False
    if isinstance(node, FileNode):
        node.held_vv = None


def leave_name(d: DirNode, node: Node, tag: bytes) -> None:
    """`node` leaves its name in `d`: if the network has it there, remember the name as deleted (by the
    device `tag`), and what the network has there (a node renamed over it publishes that until it can
    publish itself)."""
    if node.on_network:
        d.tombstones[node.name] = Tombstone(node.name, now_ns(), versions.bumped(node.vv, tag))
        shadow = network_entry(node)
        if shadow is not None:
            d.shadows[node.name] = shadow
        node.on_network = False


def network_entry(n: Node) -> DirEntry | None:
    """The entry the network has for `n` at its name, as far as a stand-in needs it (files with
    content and symlinks; folders are replaced only when empty)."""
    common = dict(mode=n.mode, uid=n.uid, gid=n.gid, atime_ns=n.atime_ns, ctime_ns=n.ctime_ns,
                  xattrs=n.xattrs, version=n.vv)
    if isinstance(n, FileNode) and n.content is not None:
        return DirEntry(n.name, n.content, size=n.content_size, mtime_ns=n.content_mtime_ns, **common)
    if isinstance(n, SymlinkNode):
        return DirEntry(n.name, Symlink(n.target), size=len(n.target), mtime_ns=n.mtime_ns, **common)
    return None
