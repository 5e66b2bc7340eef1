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

The second half of this module writes a folder's rows into the journal as the
namespace changes and the write-back publishes (`record_change`,
`put_moved_rows`, `record_published`) and reads them back after a crash
(`read_folder_rows`): nothing else knows the row layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from cryptree import versions
from cryptree.caps import WriteCap, parse_cap
from cryptree.dirnode import DirEntry, Tombstone, decode_entry, encode_entry
from cryptree.filenode import decode_content, encode_content
from pluto_fs.writeback.journal import Journal
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, SymlinkNode
from pluto_fs.writeback.publish_plan import PublishPlan

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


# ---- a folder's rows in the journal ----------------------------------------------------


def read_folder_rows(d: DirNode, attrs: bytes, rows: list[bytes],
                     new_ino: Callable[[], int]) -> tuple[dict[str, Node], list[RestoredFile]]:
    """Rebuild `d`'s own attributes, tombstones and shadows from its journal rows; return its children
    by name and the files among them whose pending data the caller still has to find in the cache."""
    apply_own_attrs(d, attrs)
    kids: dict[str, Node] = {}
    files: list[RestoredFile] = []
    for raw in rows:
        item = node_from_row(raw, new_ino(), d)
        if isinstance(item, Tombstone):
            d.tombstones[item.name] = item
            continue
        if isinstance(item, DirEntry):
            d.shadows[item.name] = item
            continue
        if isinstance(item, RestoredFile):
            files.append(item)
            node: Node = item.node
        else:
            node = item
        kids[node.name] = node
    return kids, files


def row_state(n: Node) -> tuple:
    """What a publish may change of a node's journal row."""
    return (n.vv, n.changed, n.on_network, n.held_vv if isinstance(n, FileNode) else None)


def write_all_rows(journal: Journal, d: DirNode, virtual: Node | None) -> None:
    """Journal every entry and tombstone of `d` (replacing whatever rows it had); `virtual` (the
    mount's own `shared/` folder) is never journaled."""
    assert isinstance(d.cap, WriteCap) and d.children is not None
    rows = [(n.name, entry_row(n)) for n in d.children.values() if n is not virtual]
    rows += [(tombstone_key(t.name), tombstone_row(t)) for t in d.tombstones.values()]
    rows += [(shadow_key(e.name), shadow_row(e)) for e in d.shadows.values()]
    journal.replace_entries(d.cap.writer, rows)
    d.journal_gen = journal.generation


def put_tombstone(journal: Journal, d: DirNode, name: str) -> None:
    """Journal whether `name` in `d` is remembered as deleted."""
    assert isinstance(d.cap, WriteCap)
    dead = d.tombstones.get(name)
    if dead is None:
        journal.drop_entry(d.cap.writer, tombstone_key(name))
    else:
        journal.put_entry(d.cap.writer, tombstone_key(name), tombstone_row(dead))


def put_folder_row(journal: Journal, d: DirNode) -> None:
    """Journal `d`'s own row (marked dirty), unless the journal already holds exactly that."""
    assert isinstance(d.cap, WriteCap)
    row = (journal.generation, d.seq, d.new, own_attrs_row(d))
    if row != d.journal_row:  # a change of one entry leaves the folder's own row as it was
        journal.put_folder(d.cap.writer, d.cap_text(), d.seq, row[3], d.new)
        d.journal_row = row


def record_change(journal: Journal, d: DirNode, entry: Node | None, gone: str | None,
                  virtual: Node | None) -> None:
    """Journal a change of `d`: the entry `entry` changed, the name `gone` left (with its tombstone
    and shadow), and the folder's own row; all of `d`'s rows on its first change since loading.

    One transaction; `virtual` (the mount's own `shared/` folder) is never journaled.
    """
    assert isinstance(d.cap, WriteCap) and d.children is not None
    writer = d.cap.writer
    with journal.transaction():
        if d.journal_gen != journal.generation:
            # First change since loading: the rows must hold the whole directory from now on.
            write_all_rows(journal, d, virtual)
        else:
            if gone is not None:
                there = d.children.get(gone)
                if there is None:
                    journal.drop_entry(writer, gone)
                elif there is not entry and there is not virtual:
                    journal.put_entry(writer, gone, entry_row(there))
                if gone in d.tombstones:  # the network had it: remember the name as deleted
                    put_tombstone(journal, d, gone)
                if gone in d.shadows:  # ...and what it had there, should the name be taken again
                    journal.put_entry(writer, shadow_key(gone), shadow_row(d.shadows[gone]))
            if entry is not None and entry is not virtual:
                journal.put_entry(writer, entry.name, entry_row(entry))
        put_folder_row(journal, d)


def sent_states(plan: PublishPlan) -> dict[int, tuple]:
    """The row states of the nodes `plan` sends, to compare after the publish moved them."""
    return {id(s.node): row_state(s.node) for s in plan.sent}


def put_moved_rows(journal: Journal, d: DirNode, plan: PublishPlan, before: dict[int, tuple]) -> dict[int, tuple]:
    """Journal the rows of `plan`'s nodes whose versions or flags moved since `before` (O(changes), not
    O(folder)), when the folder's rows mirror it; return the new states."""
    after = sent_states(plan)
    if d.journal_gen != journal.generation or after == before:
        return after
    assert isinstance(d.cap, WriteCap) and d.children is not None
    with journal.transaction():
        for sent in plan.sent:
            n = sent.node
            if n.parent is d and d.children.get(n.name) is n and before.get(id(n)) != after[id(n)]:
                journal.put_entry(d.cap.writer, n.name, entry_row(n))
    return after


def record_published(journal: Journal, d: DirNode, revived: list[str], unshadowed: list[str], clean: bool) -> None:
    """Journal that version `d.seq` of `d` reached the network (`clean`: exactly the journaled state):
    names it no longer remembers as deleted or shadowed lose those rows. Inside the caller's transaction."""
    assert isinstance(d.cap, WriteCap)
    if d.journal_gen == journal.generation:
        for name in revived:
            put_tombstone(journal, d, name)
        for name in unshadowed:
            journal.drop_entry(d.cap.writer, shadow_key(name))
    journal.folder_published(d.cap.writer, d.seq, clean)
    d.journal_row = None  # the row's seq and dirty flag changed
