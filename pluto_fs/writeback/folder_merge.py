"""Folding a newer version of a folder from the network into the mount, keeping every local change.

Used when a publish loses the compare-and-swap race (another writer
published first), when a refresh finds the folder changed elsewhere, and when
a load finds sibling versions. The per-name rules are cryptree.dirmerge's
(the newer version wins, an edit beats a concurrent delete, concurrent edits
keep a winner and a conflict copy); this module applies them to live inodes:

- a local node the network's version supersedes is updated in place when it
  is the same object (same content or folder: the inode stays), else it is
  detached — like a rename that replaced it, open files keep reading it;
- a local node that loses a concurrent edit is renamed to its conflict
  name (it stays dirty if its bytes are still uploading), and the winner
  takes the name;
- a losing remote entry becomes a new node under its conflict name;
- local tombstones and changes that win stay marked changed, so the next
  publish sends them with a version that descends from both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptree import versions
from cryptree.caps import WriteCap
from cryptree.dirmerge import conflict_copy_version, conflict_name, newer_attrs, resolve, same_content
from cryptree.dirnode import DirAttrs, Directory, DirEntry, DirLink, Symlink, Tombstone
from cryptree.filenode import InlineData
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, SymlinkNode, is_ready

if TYPE_CHECKING:
    from pluto_fs.writeback.namespace import Namespace


@dataclass
class MergeResult:
    """What a merge changed in the mount."""

    names: list[str] = field(default_factory=list)  # names whose entry changed (the kernel must forget them)
    conflicts: list[str] = field(default_factory=list)  # conflict copies made
    ours_left: bool = False  # something of ours is not in the network's version: publish the merge


def local_side(d: DirNode, n: Node, tag: bytes, busy_below: bool = False) -> tuple[DirEntry, bool]:
    """`n`'s current state as an entry to compare with the network's, and whether its data is pending.

    A changed node is compared under the version its next publish would get
    (one more change by this device), so anything the network has that did
    not see it is concurrent with it. A folder with unpublished changes
    inside it (`busy_below`) counts as pending: a delete elsewhere must not
    drop them.
    """
    version = versions.bumped(n.vv, tag) if n.changed else n.vv
    common = dict(mode=n.mode, uid=n.uid, gid=n.gid, atime_ns=n.atime_ns, mtime_ns=n.mtime_ns,
                  ctime_ns=n.ctime_ns, xattrs=n.xattrs, version=version)
    if isinstance(n, DirNode):
        assert n.cap is not None
        read = n.cap.read_cap() if isinstance(n.cap, WriteCap) else n.cap
        return DirEntry(n.name, DirLink(read), size=0, **common), busy_below or not is_ready(n)
    if isinstance(n, SymlinkNode):
        return DirEntry(n.name, Symlink(n.target), size=len(n.target), **common), False
    assert isinstance(n, FileNode)
    if n.content is None:
        return DirEntry(n.name, InlineData(b""), size=0, **common), True
    return DirEntry(n.name, n.content, size=n.content_size, **common), not is_ready(n)


def merge_remote(model: Namespace, d: DirNode, remote: Directory) -> MergeResult:
    """Fold `remote` (a version of `d` newer than the one its children derive from) into `d`."""
    assert d.children is not None
    result = MergeResult()
    kids, dead = d.children, d.tombstones
    theirs: dict[str, DirEntry | Tombstone] = {e.name: e for e in (*remote.tombstones, *remote.entries)}
    local_losers: list[Node] = []
    remote_losers: list[DirEntry] = []
    busy = _busy_folders(model)
    for name in sorted((kids.keys() | dead.keys() | theirs.keys()) - model.virtual_names(d)):
        node = kids.get(name)
        mine: DirEntry | Tombstone | None
        pending = False
        if node is not None:
            mine, pending = local_side(d, node, model.tag, node in busy)
        else:
            mine = dead.get(name)
        other = theirs.get(name)
        out = resolve(mine, other, a_pending=pending)
        if out.winner is None and node is not None and pending:
            # A delete elsewhere never drops what is still on its way here: the edit wins.
            assert out.tombstone is not None
            node.vv, node.changed = versions.merged(node.vv, out.tombstone.version), True
            dead.pop(name, None)
            result.ours_left = True
            continue
        if out.winner == "a":
            result.ours_left = result.ours_left or out.version != (other.version if other else None)
            if mine is not None and out.version != mine.version:  # concurrent: ours stays, and must say so
                if node is not None:
                    node.vv, node.changed = versions.merged(node.vv, other.version if other else ()), True
                elif isinstance(mine, Tombstone):
                    dead[name] = Tombstone(name, mine.deleted_ns, out.version)
        elif out.winner == "b":
            assert isinstance(other, DirEntry)
            if node is not None and (out.loser == "a" or pending):  # pending bytes are never just dropped
                del kids[name]
                local_losers.append(node)
            elif node is not None and not pending and same_content(mine, other):  # type: ignore[arg-type]
                model.adopt_attrs(node, other)
                result.names.append(name)
                dead.pop(name, None)
                continue
            elif node is not None:
                model.drop_child(d, node)
            kids[name] = model.node_from_entry(d, other)
            dead.pop(name, None)
            result.names.append(name)
        else:
            assert out.tombstone is not None
            if node is not None:
                model.drop_child(d, node)
                result.names.append(name)
            dead[name] = out.tombstone
        if out.loser == "b":
            assert isinstance(other, DirEntry)
            remote_losers.append(other)
    _place_losers(model, d, local_losers, remote_losers, result)
    result.ours_left = result.ours_left or bool(result.conflicts)
    d.seq = max(d.seq, remote.seq)
    own = DirAttrs(d.mode, d.uid, d.gid, d.atime_ns, d.mtime_ns, d.ctime_ns, d.xattrs)
    if remote.attrs is not None and newer_attrs(own, remote.attrs) is remote.attrs and remote.attrs != own:
        a = remote.attrs
        d.mode, d.uid, d.gid = a.mode, a.uid, a.gid
        d.atime_ns, d.mtime_ns, d.ctime_ns, d.xattrs = a.atime_ns, a.mtime_ns, a.ctime_ns, dict(a.xattrs)
    return result


def _busy_folders(model: Namespace) -> set[DirNode]:
    """Folders with something inside them (at any depth, or themselves) waiting to be published:
    a merge must not drop them. One walk up from each pending item."""
    busy: set[DirNode] = set()
    for pending in (*model.dirty_dirs, *model.dirty_files):
        up = pending if isinstance(pending, DirNode) else pending.parent
        while up is not None and up not in busy:
            busy.add(up)
            up = up.parent
    return busy


def _place_losers(model: Namespace, d: DirNode, local: list[Node], remote: list[DirEntry],
                  result: MergeResult) -> None:
    """Give every losing version its conflict name next to the winner."""
    assert d.children is not None
    taken = set(d.children) | set(d.tombstones)
    for node in sorted(local, key=lambda n: n.name.encode()):
        entry, _ = local_side(d, node, model.tag)
        name = _free_name(entry, taken)
        node.name, node.vv, node.changed, node.on_network = name, (), True, False
        if isinstance(node, FileNode):
            node.held_vv = None
        d.children[name] = node
        taken.add(name)
        result.conflicts.append(name)
        result.names.append(name)
    for entry in sorted(remote, key=lambda e: e.name.encode()):
        name = _free_name(entry, taken)
        copy = model.node_from_entry(d, entry)
        copy.name, copy.vv, copy.changed, copy.on_network = name, conflict_copy_version(entry.version), True, False
        d.children[name] = copy
        taken.add(name)
        result.conflicts.append(name)
        result.names.append(name)


def _free_name(entry: DirEntry, taken: set[str]) -> str:
    for attempt in range(1, 1000):
        name = conflict_name(entry, attempt)
        if name not in taken:
            return name
    raise ValueError(f"no free conflict name for {entry.name!r}")
