"""What one publish of a folder sends: its entries with their versions, its tombstones, what waits.

Rules (docs/MOUNT.md):
- a folder version never names data that is not on the network yet: a file
  whose new bytes are still uploading is sent as it was last sent at its
  name (its previous content), or left out when it has none at this name
  yet; a folder never published is left out until it is;
- every state of an entry that goes out carries a version that descends from
  the last one this device sent or received for that name, plus this
  device's change: an unchanged entry is sent with the same version, a
  changed one with a new one — also after a failed attempt, so two different
  states never share a version, whatever landed where;
- a name never goes empty on the network while it is taken locally: a file
  renamed over another (what rsync and editors do) whose bytes are still
  uploading is sent as the entry it replaced (its shadow) until it can be
  sent itself;
- tombstones of recently deleted names go out with the entries, until a new
  entry at that name is on the network (or they expire).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptree import versions
from cryptree.caps import WriteCap
from cryptree.dirmerge import prune_tombstones
from cryptree.dirnode import DirEntry, Symlink, Tombstone, link_child
from cryptree.versions import Version
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, SymlinkNode, is_ready


@dataclass
class Sent:
    """One entry of a publish and the node it stands for."""

    node: Node
    name: str  # where it was sent (a rename meanwhile makes the version belong to the old name)
    version: Version
    edits: int  # the node's edit count when the entry was built
    held: bool  # the previous content of a file whose new bytes are still uploading


@dataclass
class PublishPlan:
    """Everything one publish of a folder sends."""

    entries: list[DirEntry] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)
    held_back: bool = False  # something waits: the folder is not clean after this publish
    sent: list[Sent] = field(default_factory=list)


def plan_publish(d: DirNode, tag: bytes, virtual: set[str], now: int) -> PublishPlan:
    """The entries and tombstones to publish for `d` now."""
    assert isinstance(d.cap, WriteCap) and d.children is not None
    plan = PublishPlan()
    names: set[str] = set()
    for n in d.children.values():
        if n.name in virtual:
            continue
        common = dict(mode=n.mode, uid=n.uid, gid=n.gid, atime_ns=n.atime_ns, mtime_ns=n.mtime_ns,
                      ctime_ns=n.ctime_ns, xattrs=n.xattrs)
        ready = is_ready(n)
        held = isinstance(n, FileNode) and not ready and n.content is not None
        if not ready:
            plan.held_back = True
            if not held:
                shadow = d.shadows.get(n.name)
                if shadow is not None:
                    plan.entries.append(shadow)
                    names.add(n.name)
                continue
        if held:
            assert isinstance(n, FileNode) and n.content is not None
            version = n.held_vv if n.held_vv is not None else versions.bumped(n.vv, tag)
            common["mtime_ns"] = n.content_mtime_ns
            entry = DirEntry(n.name, n.content, size=n.content_size, version=version, **common)
        else:
            version = versions.bumped(n.vv, tag) if n.changed else n.vv
            entry = _current(d.cap, n, version, common)
        plan.entries.append(entry)
        plan.sent.append(Sent(n, n.name, version, n.edits, held))
        names.add(n.name)
    for t in prune_tombstones(d.tombstones.values(), now):
        if t.name not in names:
            plan.tombstones.append(t)
    return plan


def _current(parent: WriteCap, n: Node, version: Version, common: dict) -> DirEntry:
    if isinstance(n, DirNode):
        assert n.cap is not None
        return DirEntry(n.name, link_child(parent, n.cap), size=0, version=version, **common)
    if isinstance(n, SymlinkNode):
        return DirEntry(n.name, Symlink(n.target), size=len(n.target), version=version, **common)
    assert isinstance(n, FileNode) and n.content is not None
    return DirEntry(n.name, n.content, size=n.content_size, version=version, **common)


def _still_there(d: DirNode, s: Sent) -> bool:
    return s.node.parent is d and s.node.name == s.name and d.children is not None and d.children.get(s.name) is s.node


def note_sending(d: DirNode, plan: PublishPlan) -> None:
    """Called before the write: every entry in `plan` may be on the network from now on, whatever the
    write's outcome (it may reach only a minority of replicas). So each node's version is the one sent
    (the next different state needs a newer one), and a node renamed or removed while the write runs
    leaves a tombstone that descends from it — else a merge could bring the old name back."""
    for s in plan.sent:
        if not _still_there(d, s):
            continue
        s.node.vv = s.version
        s.node.on_network = True
        if s.held:
            assert isinstance(s.node, FileNode)
            s.node.held_vv = s.version


def note_published(d: DirNode, plan: PublishPlan) -> tuple[list[str], list[str]]:
    """The network now holds `plan` (acknowledged): nodes sent as they are are no longer changed, and
    tombstones and shadows under names that hold a published node again, or whose deletion went out,
    are done. Returns (the tombstones dropped, the shadows dropped)."""
    dropped: list[str] = []
    unshadowed: list[str] = []
    for s in plan.sent:
        n = s.node
        if not _still_there(d, s):
            continue  # moved or removed while the publish ran: its new place says what it is
        if not s.held and n.edits == s.edits:
            n.changed = False
        if d.shadows.pop(n.name, None) is not None:
            unshadowed.append(n.name)
        if n.name in d.tombstones:
            del d.tombstones[n.name]
            dropped.append(n.name)
    for t in plan.tombstones:  # the deletion is on the network: nothing may stand in for it any more
        if d.shadows.get(t.name) is not None and d.tombstones.get(t.name) is t:
            del d.shadows[t.name]
            unshadowed.append(t.name)
    return dropped, unshadowed
