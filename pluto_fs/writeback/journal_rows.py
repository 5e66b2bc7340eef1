"""How the mount's journal encodes one folder entry (a row of its `entries` table), and back.

Rows are CBOR lists; the first field says what the row holds:

    0 file     [0, name, mode, uid, gid, atime, mtime, ctime, {xattrs}, content, content_size, size,
                cache_id, vv, changed, on_network, content_mtime, held_vv]
    1 folder   [1, name, mode, uid, gid, atime, mtime, ctime, {xattrs}, cap, new, vv, changed, on_network]
    2 symlink  [2, name, mode, uid, gid, atime, mtime, ctime, {xattrs}, target, vv, changed, on_network]
    3 deleted  [3, name, deleted_ns, vv]            stored under the key TOMBSTONE_PREFIX + name
    4 shadow   [4, name, entry]                     what the network had under a name whose new node is not
                                                    publishable yet; key SHADOW_PREFIX + name

`vv`, `changed`, `on_network`, `content_mtime` and `held_vv` came with
merging several writers (journal format 3); rows written by an older pluto
end before them and read back as changed, with an empty version. A folder's
own attributes are one more row in the `folders` table (`own_attrs_row`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from cryptree import versions
from cryptree.caps import parse_cap
from cryptree.dirnode import DirEntry, Tombstone, decode_entry, encode_entry
from cryptree.filenode import decode_content, encode_content
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, SymlinkNode

FILE, FOLDER, SYMLINK, DELETED, SHADOW = 0, 1, 2, 3, 4
TOMBSTONE_PREFIX = "\0"  # no entry name can hold NUL: a deleted name's row never collides with a live one
SHADOW_PREFIX = "\0\0"


def tombstone_key(name: str) -> str:
    """The journal key of the row that remembers `name` was deleted."""
    return TOMBSTONE_PREFIX + name


def shadow_key(name: str) -> str:
    """The journal key of the row that keeps a replaced name's last published entry."""
    return SHADOW_PREFIX + name


def _vv(version: versions.Version | None) -> Any:
    return None if version is None else versions.encode(version)


def _unvv(value: Any) -> versions.Version:
    return tuple((bytes(t), c) for t, c in value) if value else ()


def entry_row(n: Node) -> bytes:
    """One child as the journal keeps it."""
    head = [n.name, n.mode, n.uid, n.gid, n.atime_ns, n.mtime_ns, n.ctime_ns, n.xattrs]
    tail = [_vv(n.vv), n.changed, n.on_network]
    if isinstance(n, DirNode):
        return cbor2.dumps([FOLDER, *head, n.cap_text(), n.new, *tail])
    if isinstance(n, SymlinkNode):
        return cbor2.dumps([SYMLINK, *head, n.target, *tail])
    assert isinstance(n, FileNode)
    content = encode_content(n.content) if n.content is not None else None
    return cbor2.dumps([FILE, *head, content, n.content_size, n.size, n.cache_id if n.dirty else None, *tail,
                        n.content_mtime_ns, _vv(n.held_vv)])


def tombstone_row(t: Tombstone) -> bytes:
    """A deleted name as the journal keeps it."""
    return cbor2.dumps([DELETED, t.name, t.deleted_ns, _vv(t.version)])


def shadow_row(entry: DirEntry) -> bytes:
    """A replaced name's last published entry as the journal keeps it."""
    return cbor2.dumps([SHADOW, entry.name, encode_entry(entry)])


def own_attrs_row(d: DirNode) -> bytes:
    """A folder's own attributes as the journal keeps them."""
    return cbor2.dumps([d.mode, d.uid, d.gid, d.atime_ns, d.mtime_ns, d.ctime_ns, d.xattrs])


def apply_own_attrs(d: DirNode, raw: bytes) -> None:
    """Set a folder's own attributes from `own_attrs_row` output."""
    own = cbor2.loads(raw)
    d.mode, d.uid, d.gid, d.atime_ns, d.mtime_ns, d.ctime_ns = own[:6]
    d.xattrs = dict(own[6])


@dataclass
class RestoredFile:
    """A file row's parts the model still has to check against the cache (the pending data)."""

    node: FileNode
    cache_id: str | None


def node_from_row(raw: bytes, ino: int, parent: DirNode) -> Node | RestoredFile | Tombstone | DirEntry:
    """A child (or a tombstone, or a shadow entry) from its row; files come with the cache id their
    pending data is in."""
    row = cbor2.loads(raw)
    kind = row[0]
    if kind == DELETED:
        return Tombstone(row[1], row[2], _unvv(row[3]))
    if kind == SHADOW:
        return decode_entry(row[2])
    name, mode, uid, gid, at, mt, ct, xattrs = row[1:9]
    common = (ino, name, parent, mode, uid, gid, at, mt, ct, dict(xattrs))
    if kind == FOLDER:
        node: Node = DirNode(*common, cap=parse_cap(row[9]), new=row[10])
        _versioned(node, row[11:], default_on_network=not row[10])
        return node
    if kind == SYMLINK:
        node = SymlinkNode(*common, target=row[9])
        _versioned(node, row[10:], default_on_network=True)
        return node
    content = decode_content(row[9]) if row[9] is not None else None
    file = FileNode(*common, content=content, content_size=row[10], size=row[11])
    _versioned(file, row[13:16], default_on_network=content is not None)
    if len(row) > 17:
        file.content_mtime_ns, file.held_vv = row[16], (None if row[17] is None else _unvv(row[17]))
    else:
        file.content_mtime_ns = mt
    return RestoredFile(file, row[12])


def _versioned(node: Node, tail: list[Any], default_on_network: bool) -> None:
    if len(tail) >= 3:
        node.vv, node.changed, node.on_network = _unvv(tail[0]), bool(tail[1]), bool(tail[2])
    else:  # a row from before version vectors: send it again, with a version
        node.vv, node.changed, node.on_network = (), True, default_on_network
