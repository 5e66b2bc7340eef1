"""The mount's in-memory tree, with write-back to the network.

Every change made through the mount is applied here at once (so the next
system call sees it), recorded in the journal, and published later:
directories as new slot versions, file data as chunks in packs. Publishing
follows two rules that keep readers safe (publish_plan.py has the details):

- a directory version never names data that is not on the network yet: a
  file whose new bytes are still local is published with its previous
  content (or left out if it has none), and a new child directory is
  published before the parent that links it;
- a directory's journal rows are marked clean only once the network holds
  exactly that state and none of its children is waiting, so a crash at any
  point leaves enough in the journal to resume.

Several writers (other devices, followers with write access, two mounts)
publish the same folders: a publish is a compare-and-swap on the folder's
slot, and one that finds a newer version merges it into the tree entry by
entry (folder_merge.py) and publishes the merge. Nothing another writer
acknowledged is overwritten, and nothing of ours is dropped.

The journal keeps one row per directory entry: a change writes the entry it
touched, never the whole directory (that made a directory of n entries cost
O(n) per create, O(n²) to fill).
"""

from __future__ import annotations

import logging
import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import trio

from cryptree import versions
from cryptree.caps import ReadCap, WriteCap
from cryptree.dirnode import (
    DirAttrs,
    Directory,
    DirEntry,
    DirLink,
    Symlink,
    Tombstone,
    child_write_cap,
    new_directory_cap,
)
from cryptree.filenode import FileContent, FileRef, InlineData
from pluto_fs.errors import ConflictError, PlutoError, QuotaExceeded
from pluto_fs.volume.volume import Volume
from pluto_fs.writeback.folder_merge import merge_remote
from pluto_fs.writeback.journal import Journal
from pluto_fs.writeback.journal_rows import (
    RestoredFile,
    apply_own_attrs,
    entry_row,
    node_from_row,
    own_attrs_row,
    shadow_key,
    shadow_row,
    tombstone_key,
    tombstone_row,
)
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, SymlinkNode, mode_of, now_ns
from pluto_fs.writeback.publish_plan import PublishPlan, note_published, note_sending, plan_publish

log = logging.getLogger(__name__)

ROOT_INO = 1
SHARED_NAME = "shared"
PUBLISH_CONCURRENCY = 16  # directory slots published at once
PUBLISH_MERGES = 5  # times one publish merges a newer version and tries again before giving up for the round
REFRESH_AFTER = 5.0  # seconds a loaded folder is trusted before opening it reads it again from the network

__all__ = ["DirNode", "FileNode", "FsModel", "Node", "SymlinkNode", "mode_of", "now_ns"]


class FsModel:
    """Inode table, directory loading, changes, and write-back publishing."""

    def __init__(self, volume: Volume, journal: Journal, cache_dir: Path, root_cap: WriteCap | ReadCap,
                 shares: Callable[[], dict[str, tuple[ReadCap, dict[bytes, WriteCap]]]] | None = None) -> None:
        self.volume = volume
        # This device in entries' version vectors (a model built without a network, in tests, has none).
        self.tag = volume.writer_tag if volume is not None else bytes(8)
        self.journal = journal
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.inodes: dict[int, Node] = {}
        self._next_ino = ROOT_INO + 1
        now = now_ns()
        self.root = DirNode(ROOT_INO, "", None, 0o755, os.getuid(), os.getgid(), now, now, now, cap=root_cap)
        self.inodes[ROOT_INO] = self.root
        self.dirty_dirs: set[DirNode] = set()
        self.dirty_files: set[FileNode] = set()
        # An upper bound of the pending bytes `check_space` counts, and when it was last exact:
        # summing every dirty file on every write made writes O(dirty files) while peers are away.
        self._pending_bound: int | None = None
        self._pending_exact_at = 0.0
        self._journal_dirs = {w: (seq, attrs, new) for w, _cap, seq, attrs, new in journal.folders()}
        self._pending_files = journal.pending_files()
        self.changed = trio.Event()  # set on every change: wakes the background flusher
        # Files being uploaded and the event set when that upload ends. fsync and the
        # write-back used to store the same file at once (twice the sealing and traffic).
        self.uploading: dict[FileNode, trio.Event] = {}
        # What others share with us: owner -> (their sharing folder, extra shared folders by name).
        self.shares = shares
        self.shared: DirNode | None = None  # the virtual `shared/` folder in the root
        self.allowance: tuple[int, int] | None = None  # storage exchange (allowed, used) raw bytes, if known
        # Folders to read again from the network (opened after REFRESH_AFTER). The kernel is not
        # told which names a merge changed: it trusts entries for ENTRY_TIMEOUT (1 s) anyway, and a
        # reverse invalidation waits for the folder's lock, which a pending fsync(dir) holds: if the
        # mount is killed then, neither can finish and the fsync hangs for good (the fault checker
        # hit it).
        self.refresh_wanted: dict[DirNode, None] = {}
        self.refresh_event = trio.Event()
        self._drop_stale_cache()

    # ---- inodes ------------------------------------------------------------------

    def _ino(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def cache_path(self, cache_id: str) -> Path:
        """Where the local copy `cache_id` lives."""
        return self.cache_dir / cache_id

    def _drop_stale_cache(self) -> None:
        """Cache files the journal does not need are left over from an earlier session: remove them."""
        for f in self.cache_dir.iterdir():
            if f.name not in self._pending_files:
                f.unlink(missing_ok=True)

    # ---- loading -----------------------------------------------------------------

    async def children(self, d: DirNode) -> dict[str, Node]:
        """The directory's children, loaded from the journal or the network on first use."""
        if d.children is not None:
            return d.children
        async with d.load_lock:
            if d.children is not None:
                return d.children
            if d is self.shared:
                self._build_shared(d)
                return d.children  # type: ignore[return-value]
            journaled = self._journal_dirs.pop(d.cap.writer, None)
            if journaled is not None:
                seq, attrs, new = journaled
                self._restore(d, seq, attrs, new, self.journal.entries(d.cap.writer))
            else:
                directory, siblings = await self.volume.load_folder(d.cap, missing_ok=d is self.root)
                self._build(d, directory)
                if siblings and isinstance(d.cap, WriteCap):
                    self.touch_dir(d, times=False)  # publish the merge so the siblings stop there
            if d is self.root:
                self._add_shared_root()
            elif d.parent is self.shared:
                self._add_write_shares(d)
            return d.children  # type: ignore[return-value]

    async def replay_journal(self) -> int:
        """Load folders until every one the journal still holds changes for is replayed; return how many.

        Folders are replayed when first loaded; after a crash, one the user
        does not open again would keep its pending files local (and out of
        `pluto status`) indefinitely. Walks the tree depth-first and stops as
        soon as none is left; a journaled folder no longer in the tree is
        reported and left in the journal.
        """
        before = len(self._journal_dirs)
        stack: list[DirNode] = [self.root]
        while self._journal_dirs and stack:
            d = stack.pop()
            kids = await self.children(d)
            stack.extend(k for k in kids.values() if isinstance(k, DirNode))
        if self._journal_dirs:
            log.warning("%d journaled folders are no longer in the tree; their changes stay in the journal",
                        len(self._journal_dirs))
        replayed = before - len(self._journal_dirs)
        if replayed:
            self.changed.set()
        return replayed

    # ---- shared with us ------------------------------------------------------------

    def _add_shared_root(self) -> None:
        """Show `shared/` in the root when someone shares with us (it hides a real entry of that name)."""
        if self.shares is None or not self.shares():
            return
        now = now_ns()
        if self.shared is None:
            self.shared = DirNode(self._ino(), SHARED_NAME, self.root, 0o555, self.root.uid, self.root.gid,
                                  now, now, now, cap=None)
            self.inodes[self.shared.ino] = self.shared
        assert self.root.children is not None
        self.root.children[SHARED_NAME] = self.shared

    def _build_shared(self, d: DirNode) -> None:
        kids: dict[str, Node] = {}
        for owner, (share_dir, _) in (self.shares() if self.shares else {}).items():
            node = DirNode(self._ino(), owner, d, 0o555, d.uid, d.gid, d.atime_ns, d.mtime_ns, d.ctime_ns,
                           cap=share_dir)
            kids[owner] = node
            self.inodes[node.ino] = node
        d.children = kids

    def _add_write_shares(self, owner_node: DirNode) -> None:
        """Folders shared with us writably: the owner's sharing folder lists them read-only; the
        write capability came in a sealed grant and upgrades the matching entry."""
        assert owner_node.children is not None
        _, writable = (self.shares() if self.shares else {}).get(owner_node.name, (None, {}))
        for node in owner_node.children.values():
            if isinstance(node, DirNode) and node.cap is not None and node.cap.writer in writable:
                node.cap = writable[node.cap.writer]
                node.mode |= 0o200

    def share_root(self, node: Node) -> Node | None:
        """The shared folder `node` lies in (a child of shared/<owner>), or None for our own tree."""
        while node.parent is not None:
            if node.parent.parent is self.shared and self.shared is not None:
                return node
            node = node.parent
        return None

    def refresh_shared(self) -> None:
        """Forget what was loaded under shared/, so the owners' latest versions load on next use.

        Skipped while anything under shared/ waits to be published, so local
        changes to a writable share are never dropped.
        """
        if self.shared is None:
            if self.root.children is not None:
                self._add_shared_root()
            return
        busy = [n for n in list(self.dirty_dirs) + list(self.dirty_files) if self.share_root(n) is not None]
        if not busy:
            self.shared.children = None

    def _build(self, d: DirNode, directory: Directory) -> None:
        d.seq = directory.seq
        if directory.attrs is not None:
            self._set_own_attrs(d, directory.attrs)
        kids: dict[str, Node] = {}
        for e in directory.entries:
            kids[e.name] = self.node_from_entry(d, e)
        d.children = kids
        d.tombstones = {t.name: t for t in directory.tombstones}
        d.refreshed = trio.current_time()

    @staticmethod
    def _set_own_attrs(d: DirNode, a: DirAttrs) -> None:
        d.mode, d.uid, d.gid = a.mode, a.uid, a.gid
        d.atime_ns, d.mtime_ns, d.ctime_ns, d.xattrs = a.atime_ns, a.mtime_ns, a.ctime_ns, dict(a.xattrs)

    def node_from_entry(self, d: DirNode, e: DirEntry) -> Node:
        """A new inode for entry `e` of folder `d`, as the network has it."""
        common = (self._ino(), e.name, d, e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.ctime_ns, dict(e.xattrs))
        if isinstance(e.child, DirLink):
            cap: WriteCap | ReadCap = e.child.cap
            if isinstance(d.cap, WriteCap) and e.child.wrapped_writer is not None:
                cap = child_write_cap(d.cap, e)
            node: Node = DirNode(*common, cap=cap)
        elif isinstance(e.child, Symlink):
            node = SymlinkNode(*common, target=e.child.target)
        else:
            node = FileNode(*common, content=e.child, content_size=e.size, size=e.size,
                            content_mtime_ns=e.mtime_ns, held_vv=e.version)
        node.vv, node.on_network = e.version, True
        self.inodes[node.ino] = node
        return node

    def adopt_attrs(self, node: Node, e: DirEntry) -> None:
        """The network's newer version of `node`'s entry holds the same thing: take its attributes and version."""
        node.mode, node.uid, node.gid = e.mode, e.uid, e.gid
        node.atime_ns, node.mtime_ns, node.ctime_ns, node.xattrs = e.atime_ns, e.mtime_ns, e.ctime_ns, dict(e.xattrs)
        node.vv, node.changed, node.on_network = e.version, False, True
        if isinstance(node, FileNode):
            node.content_mtime_ns, node.held_vv = e.mtime_ns, e.version

    def drop_child(self, d: DirNode, node: Node) -> None:
        """Take `node` out of `d` because the network's newer version no longer has it there (no tombstone:
        the network already says so). Open files keep reading it, as after a rename over it."""
        assert d.children is not None
        if d.children.get(node.name) is node:
            del d.children[node.name]
        node.parent = None
        if isinstance(node, DirNode):
            self.dirty_dirs.discard(node)
        self.release_if_unused(node)

    def virtual_names(self, d: DirNode) -> set[str]:
        """Names in `d` that are the mount's own (the `shared/` folder in the root), never published."""
        if d is self.root and self.shared is not None and d.children is not None \
                and d.children.get(SHARED_NAME) is self.shared:
            return {SHARED_NAME}
        return set()

    # ---- journal encoding ------------------------------------------------------------

    def _restore(self, d: DirNode, seq: int, attrs: bytes, new: bool, entries: list[bytes]) -> None:
        """Rebuild a directory from its journal rows (a crash left it unpublished)."""
        d.seq, d.new = seq, new
        apply_own_attrs(d, attrs)
        kids: dict[str, Node] = {}
        for raw in entries:
            item = node_from_row(raw, self._ino(), d)
            if isinstance(item, Tombstone):
                d.tombstones[item.name] = item
                continue
            if isinstance(item, DirEntry):
                d.shadows[item.name] = item
                continue
            if isinstance(item, RestoredFile):
                node: Node = item.node
                cache_id = item.cache_id
                if cache_id is not None and cache_id in self._pending_files and self.cache_path(cache_id).exists():
                    file = item.node
                    file.cache_id, file.dirty = cache_id, True
                    file.size = self.cache_path(cache_id).stat().st_size
                    self.dirty_files.add(file)
                    if self._pending_bound is not None:  # replayed lazily: pending from now on
                        self._pending_bound += file.size
            else:
                node = item
            kids[node.name] = node
            self.inodes[node.ino] = node
        d.children = kids
        d.journal_gen = self.journal.generation  # restored from exactly these rows
        d.dirty = True
        self.dirty_dirs.add(d)

    def touch_dir(self, d: DirNode, times: bool = True, entry: Node | None = None, gone: str | None = None,
                  record: bool = True) -> None:
        """Record that directory `d` changed, schedule a publish.

        `entry` is a child whose entry changed (added or modified), `gone` a
        name that left (its tombstone, if it leaves one, is journaled); the
        journal writes just those and the directory's own row. The
        directory's children must be loaded. Without `record` the change is
        published but not journaled (a crash may forget it: only for changes
        worth no commit, such as a ctime).
        """
        if not isinstance(d.cap, WriteCap):
            return  # read-only (a share, or shared/ itself): nothing of ours to publish
        if d.parent is None and d is not self.root:
            return  # removed: nothing links it, nothing to publish
        assert d.children is not None, "a directory is changed only once its entries are loaded"
        if times:
            d.mtime_ns = d.ctime_ns = now_ns()
        if entry is not None and entry is not self.shared:
            entry.changed = True  # its next publish carries a new version
            entry.edits += 1
        d.version += 1
        d.dirty = True
        self.dirty_dirs.add(d)
        if not record:
            self.changed.set()
            return
        writer = d.cap.writer
        journal = self.journal
        with journal.transaction():
            if d.journal_gen != journal.generation:
                # First change since loading: the rows must hold the whole directory from now on.
                self._write_all_rows(d)
            else:
                if gone is not None:
                    there = d.children.get(gone)
                    if there is None:
                        journal.drop_entry(writer, gone)
                    elif there is not entry and there is not self.shared:
                        journal.put_entry(writer, gone, entry_row(there))
                    if gone in d.tombstones:  # the network had it: remember the name as deleted
                        self._journal_tombstone(d, gone)
                    if gone in d.shadows:  # ...and what it had there, should the name be taken again
                        journal.put_entry(writer, shadow_key(gone), shadow_row(d.shadows[gone]))
                if entry is not None and entry is not self.shared:
                    journal.put_entry(writer, entry.name, entry_row(entry))
            self._journal_folder_row(d)
        self.changed.set()

    def _write_all_rows(self, d: DirNode) -> None:
        """Journal every entry and tombstone of `d` (replacing whatever rows it had)."""
        assert isinstance(d.cap, WriteCap) and d.children is not None
        rows = [(n.name, entry_row(n)) for n in d.children.values() if n is not self.shared]
        rows += [(tombstone_key(t.name), tombstone_row(t)) for t in d.tombstones.values()]
        rows += [(shadow_key(e.name), shadow_row(e)) for e in d.shadows.values()]
        self.journal.replace_entries(d.cap.writer, rows)
        d.journal_gen = self.journal.generation

    def _journal_tombstone(self, d: DirNode, name: str) -> None:
        """Journal whether `name` in `d` is remembered as deleted."""
        assert isinstance(d.cap, WriteCap)
        dead = d.tombstones.get(name)
        if dead is None:
            self.journal.drop_entry(d.cap.writer, tombstone_key(name))
        else:
            self.journal.put_entry(d.cap.writer, tombstone_key(name), tombstone_row(dead))

    def _journal_folder_row(self, d: DirNode) -> None:
        assert isinstance(d.cap, WriteCap)
        row = (self.journal.generation, d.seq, d.new, own_attrs_row(d))
        if row != d.journal_row:  # a change of one entry leaves the folder's own row as it was
            self.journal.put_folder(d.cap.writer, d.cap_text(), d.seq, row[3], d.new)
            d.journal_row = row

    def touch_meta(self, node: Node, record: bool = True) -> None:
        """Record a metadata change of `node` (kept in its parent's entry, or its own slot for dirs).

        `record=False` when only the ctime changed (a chmod to the mode a file
        already has, which rsync does after every create): it is published but
        costs no journal commit.
        """
        node.ctime_ns = now_ns()
        with self.journal.transaction():
            if isinstance(node, DirNode):
                self.touch_dir(node, times=False, record=record)
            if node.parent is not None:
                self.touch_dir(node.parent, times=False, entry=node, record=record)

    # ---- creating ----------------------------------------------------------------------

    @staticmethod
    def inherit(parent: DirNode, mode: int, gid: int, is_dir: bool) -> tuple[int, int]:
        """(mode, gid) of a new entry: a setgid directory passes on its group (and, to dirs, the bit)."""
        if parent.mode & stat.S_ISGID:
            return (mode | stat.S_ISGID if is_dir else mode), parent.gid
        return mode, gid

    def add_file(self, parent: DirNode, name: str, mode: int, uid: int, gid: int) -> FileNode:
        """A new empty file (with an empty local cache file, so it is writable at once)."""
        mode, gid = self.inherit(parent, mode, gid, is_dir=False)
        now = now_ns()
        node = FileNode(self._ino(), name, parent, mode, uid, gid, now, now, now)
        node.cache_id = uuid.uuid4().hex
        # os.open, not Path.touch: touch tries utime first, a failed syscall and an exception per file.
        os.close(os.open(self.cache_path(node.cache_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._attach(parent, node)
        return node

    def add_dir(self, parent: DirNode, name: str, mode: int, uid: int, gid: int) -> DirNode:
        """A new empty directory with fresh keys."""
        mode, gid = self.inherit(parent, mode, gid, is_dir=True)
        now = now_ns()
        node = DirNode(self._ino(), name, parent, mode, uid, gid, now, now, now,
                       cap=new_directory_cap(), children={}, new=True)
        with self.journal.transaction():  # the parent never names a folder the journal lacks
            self._attach(parent, node)
            self.touch_dir(node, times=False)
        return node

    def add_symlink(self, parent: DirNode, name: str, target: bytes, uid: int, gid: int) -> SymlinkNode:
        """A new symbolic link."""
        now = now_ns()
        node = SymlinkNode(self._ino(), name, parent, 0o777, uid, gid, now, now, now, target=target)
        self._attach(parent, node)
        return node

    def _attach(self, parent: DirNode, node: Node) -> None:
        assert parent.children is not None
        parent.children[node.name] = node
        node.parent = parent
        self._take_name(parent, node)
        self.inodes[node.ino] = node
        self.touch_dir(parent, entry=node)

    @staticmethod
    def _take_name(d: DirNode, node: Node) -> None:
        """`node` is new at its name in `d`: its version descends from the name's tombstone, if any."""
        dead = d.tombstones.get(node.name)
        node.vv, node.on_network = (dead.version if dead is not None else ()), False
        if isinstance(node, FileNode):
            node.held_vv = None

    def _leave_name(self, d: DirNode, node: Node) -> None:
        """`node` leaves its name in `d`: if the network has it there, remember the name as deleted, and
        what the network has there (a node renamed over it publishes that until it can publish itself)."""
        if node.on_network:
            d.tombstones[node.name] = Tombstone(node.name, now_ns(), versions.bumped(node.vv, self.tag))
            shadow = self._network_entry(node)
            if shadow is not None:
                d.shadows[node.name] = shadow
            node.on_network = False

    @staticmethod
    def _network_entry(n: Node) -> DirEntry | None:
        """The entry the network has for `n` at its name, as far as a stand-in needs it (files with
        content and symlinks; folders are replaced only when empty)."""
        common = dict(mode=n.mode, uid=n.uid, gid=n.gid, atime_ns=n.atime_ns, ctime_ns=n.ctime_ns,
                      xattrs=n.xattrs, version=n.vv)
        if isinstance(n, FileNode) and n.content is not None:
            return DirEntry(n.name, n.content, size=n.content_size, mtime_ns=n.content_mtime_ns, **common)
        if isinstance(n, SymlinkNode):
            return DirEntry(n.name, Symlink(n.target), size=len(n.target), mtime_ns=n.mtime_ns, **common)
        return None

    def detach(self, node: Node) -> None:
        """Take `node` out of its directory (unlink, rmdir, or replaced by a rename)."""
        parent = node.parent
        with self.journal.transaction():
            if parent is not None and parent.children is not None and parent.children.get(node.name) is node:
                del parent.children[node.name]
                self._leave_name(parent, node)
                self.touch_dir(parent, gone=node.name)
            node.parent = None
            if isinstance(node, DirNode):
                self.dirty_dirs.discard(node)
                if isinstance(node.cap, WriteCap):
                    # Only empty folders are removed: no row of its own is needed any more.
                    self.journal.drop_folder(node.cap.writer)
        self.release_if_unused(node)

    def release_if_unused(self, node: Node) -> None:
        """Free a detached node once neither the kernel nor an open file refers to it any more.

        Until then it stays usable: a reader that looked a file up just before
        a rename replaced it still opens and reads the old bytes.
        """
        if node.parent is not None or node is self.root or node.lookups > 0:
            return
        if isinstance(node, FileNode):
            if node.open_handles > 0:
                return
            self.forget_file(node)
        self.inodes.pop(node.ino, None)

    def forget_file(self, node: FileNode) -> None:
        """Drop a detached file's local copy and pending data."""
        self.dirty_files.discard(node)
        if node.cache_id is not None:
            self.cache_path(node.cache_id).unlink(missing_ok=True)
            self.journal.drop_file(node.cache_id)
            node.cache_id = None

    def rename(self, node: Node, new_parent: DirNode, new_name: str) -> None:
        """Move `node` (the caller has removed any node at the destination)."""
        old_parent = node.parent
        assert old_parent is not None and old_parent.children is not None and new_parent.children is not None
        old_name = node.name
        del old_parent.children[old_name]
        self._leave_name(old_parent, node)
        node.name = new_name
        node.parent = new_parent
        new_parent.children[new_name] = node
        self._take_name(new_parent, node)
        node.ctime_ns = now_ns()
        with self.journal.transaction():  # one commit: a crash never shows the node in both places or neither
            if new_parent is old_parent:
                self.touch_dir(old_parent, entry=node, gone=old_name)
            else:
                self.touch_dir(old_parent, gone=old_name)
                self.touch_dir(new_parent, entry=node)

    # ---- file data ---------------------------------------------------------------------

    async def materialize(self, node: FileNode, truncate: bool = False) -> Path:
        """Make sure the file has a full local copy (fetched from the network if needed)."""
        if node.cache_id is not None and self.cache_path(node.cache_id).exists():
            return self.cache_path(node.cache_id)
        cache_id = uuid.uuid4().hex
        path = self.cache_path(cache_id)
        with open(path, "wb") as f:
            if not truncate and node.content is not None and node.size:
                if isinstance(node.content, InlineData):
                    f.write(node.content.data)
                else:
                    manifest = await self.volume.manifest(node.content, node.size)
                    for ref in manifest.chunks:
                        f.write(await self.volume._chunk(ref))
        node.cache_id = cache_id
        return path

    def check_space(self, growth: int) -> None:
        """ENOSPC now, at write time, if the storage exchange cannot take `growth` more bytes.

        Pending local bytes count at their stored cost (n/k times their size):
        the check errs on the side of refusing a little early rather than
        accepting data that can never be uploaded.
        """
        if growth <= 0 or self.allowance is None:
            return
        allowed, used = self.allowance
        expansion = self.volume.packs.n / self.volume.packs.k
        pending = self._pending_bound
        now = time.monotonic()
        # The bound only ever over-counts (uploads, truncates and deletions lower the true figure),
        # so it may accept on its own; a refusal, or a bound older than a second, is re-checked exactly.
        if pending is None or now - self._pending_exact_at > 1.0 or used + (pending + growth) * expansion > allowed:
            pending = sum(f.size for f in self.dirty_files if f.parent is not None)
            self._pending_exact_at = now
        if used + (pending + growth) * expansion > allowed:
            raise QuotaExceeded(
                f"storage exchange: {used} of {allowed} bytes used; offer more space (pluto serve --owner) "
                "or delete files"
            )
        self._pending_bound = pending + growth

    def mark_written(self, node: FileNode) -> None:
        """The local copy changed: schedule an upload and keep the journal able to resume it."""
        node.version += 1
        node.last_write = time.monotonic()
        node.mtime_ns = node.ctime_ns = now_ns()
        if not node.dirty:
            # While the new bytes upload, the folder keeps publishing the file as the network last had
            # it at this name: under that same version if nothing else changed since, else a new one.
            node.held_vv = node.vv if node.on_network and not node.changed else None
            node.dirty = True
            self.dirty_files.add(node)
            if self._pending_bound is not None:  # all of a newly dirty file is pending again
                self._pending_bound += node.size
            assert node.cache_id is not None
            with self.journal.transaction():
                self.journal.put_file(node.cache_id, node.size)
                if node.parent is not None:
                    self.touch_dir(node.parent, times=False, entry=node)
        self.changed.set()

    async def upload_files(self, nodes: list[FileNode], wait_busy: bool = True) -> None:
        """Store dirty files' local copies on the network and record their new content.

        All files go into the same packs and are flushed once, so a thousand
        small files cost a few packs, not a thousand. A file another task is
        already uploading is not stored twice: with `wait_busy` (fsync) this
        waits for that upload and then stores whatever it did not cover;
        without (the write-back) it leaves the file to that task.
        """
        mine: list[FileNode] = []
        for node in nodes:
            while (busy := self.uploading.get(node)) is not None and wait_busy:
                await busy.wait()
            if node.dirty and node.cache_id is not None and node not in self.uploading:
                mine.append(node)
        if not mine:
            return
        done = trio.Event()
        for node in mine:
            self.uploading[node] = done
        try:
            await self._upload(mine)
        finally:
            for node in mine:
                del self.uploading[node]
            done.set()

    async def _upload(self, nodes: list[FileNode]) -> None:
        mark = self.volume.upload_mark()
        staged = []
        for node in nodes:
            if not node.dirty or node.cache_id is None:
                continue
            version, cache_id = node.version, node.cache_id
            previous = None
            if isinstance(node.content, FileRef):
                try:
                    previous = await self.volume.manifest(node.content)
                except PlutoError:
                    previous = None  # dedup is an optimisation: store everything again
            content, size = await self.volume.store_file(self.cache_path(cache_id), previous)
            staged.append((node, version, cache_id, content, size))
        await self.volume.flush(since=mark)
        before: list[tuple[FileNode, FileContent | None, int, int, int]] = []
        try:
            with self.journal.transaction():  # one commit for the whole batch
                for node, version, cache_id, content, size in staged:
                    if node.version != version or node.cache_id != cache_id:
                        continue  # written again meanwhile: the next round uploads the newer bytes
                    before.append((node, node.content, node.content_size, node.size, node.content_mtime_ns))
                    node.content, node.content_size, node.size, node.dirty = content, size, size, False
                    node.content_mtime_ns = node.mtime_ns
                    self.dirty_files.discard(node)
                    if node.parent is not None:
                        # The new content is journaled in the same commit that drops the data row.
                        self.touch_dir(node.parent, times=False, entry=node)
                    self.journal.drop_file(cache_id)
        except BaseException:
            # Not committed (a full disk): the journal still says pending, so must the model, or the
            # files' rows would stay pending in the journal for good. The retry finds the chunks
            # already placed (dedup) and only commits again.
            for node, content, content_size, size, mtime in before:
                node.content, node.content_size, node.size, node.dirty = content, content_size, size, True
                node.content_mtime_ns = mtime
                self.dirty_files.add(node)
            raise

    # ---- publishing ----------------------------------------------------------------------

    async def publish(self, d: DirNode) -> None:
        """Publish `d` (and first any never-published child directories) as a new slot version.

        A compare-and-swap on the folder's slot: if another writer published
        a newer version meanwhile, it is merged into the tree entry by entry
        (folder_merge.py) and the merge is published instead.
        """
        if not isinstance(d.cap, WriteCap) or d.children is None:
            d.dirty = False
            self.dirty_dirs.discard(d)
            return
        async with d.publish_lock:
            for child in list(d.children.values()):
                if isinstance(child, DirNode) and child.new:
                    await self.publish(child)
            for _attempt in range(PUBLISH_MERGES):
                version = d.version
                plan = plan_publish(d, self.tag, self.virtual_names(d), now_ns())
                attrs = DirAttrs(d.mode, d.uid, d.gid, d.atime_ns, d.mtime_ns, d.ctime_ns, d.xattrs)
                before = {id(s.node): _row_state(s.node) for s in plan.sent}
                note_sending(d, plan)
                before = self._journal_moved_rows(d, plan, before)  # a crash mid-write must remember it too
                try:
                    await self.volume.save_dir(d.cap, plan.entries, attrs, d.seq, tombstones=plan.tombstones)
                    break
                except ConflictError:
                    remote, _ = await self.volume.load_folder(d.cap, missing_ok=d is self.root)
                    self._merge(d, remote)
            else:
                raise ConflictError("a folder keeps changing elsewhere; will retry")
            d.seq += 1
            d.refreshed = trio.current_time()
            revived, unshadowed = note_published(d, plan)
            was_new = d.new
            d.new = False
            # `version` bumps on every change, so an unchanged version means the network now
            # holds exactly what the rows say: they may be marked clean.
            clean = d.version == version and not plan.held_back
            with self.journal.transaction():
                self._journal_moved_rows(d, plan, before)
                if d.journal_gen == self.journal.generation:
                    for name in revived:
                        self._journal_tombstone(d, name)
                    for name in unshadowed:
                        self.journal.drop_entry(d.cap.writer, shadow_key(name))
                self.journal.folder_published(d.cap.writer, d.seq, clean)
                d.journal_row = None  # the row's seq and dirty flag changed
                if was_new and d.parent is not None:
                    self.touch_dir(d.parent, times=False, entry=d)  # the parent can now link it
            if clean:  # only once the journal says so too (a full disk keeps both saying "dirty")
                d.dirty = False
                self.dirty_dirs.discard(d)

    def _journal_moved_rows(self, d: DirNode, plan: PublishPlan, before: dict[int, tuple]) -> dict[int, tuple]:
        """Journal the rows of `plan`'s nodes whose versions or flags moved since `before` (O(changes), not
        O(folder)), when the folder's rows mirror it; return the new states."""
        after = {id(s.node): _row_state(s.node) for s in plan.sent}
        if d.journal_gen != self.journal.generation or after == before:
            return after
        assert isinstance(d.cap, WriteCap) and d.children is not None
        with self.journal.transaction():
            for sent in plan.sent:
                n = sent.node
                if n.parent is d and d.children.get(n.name) is n and before.get(id(n)) != after[id(n)]:
                    self.journal.put_entry(d.cap.writer, n.name, entry_row(n))
        return after

    def _merge(self, d: DirNode, remote: Directory) -> None:
        """Fold the network's newer version of `d` into the tree and journal the result whole."""
        result = merge_remote(self, d, remote)
        d.refreshed = trio.current_time()
        if result.conflicts:
            log.warning("concurrent changes to the same names elsewhere: kept both, as %s", ", ".join(result.conflicts))
        d.journal_gen = None  # rows changed everywhere: written whole at the next change
        if isinstance(d.cap, WriteCap) and (d.dirty or result.ours_left):
            self.touch_dir(d, times=False)

    def busy_folders(self) -> set[DirNode]:
        """Folders with something inside them (at any depth, or themselves) waiting to be published:
        a merge must not drop them. One walk up from each pending item."""
        busy: set[DirNode] = set()
        for pending in (*self.dirty_dirs, *self.dirty_files):
            up = pending if isinstance(pending, DirNode) else pending.parent
            while up is not None and up not in busy:
                busy.add(up)
                up = up.parent
        return busy

    async def refresh(self, d: DirNode, force: bool = False) -> None:
        """Read `d` again from the network if it was read more than REFRESH_AFTER ago (always with `force`),
        and merge what changed elsewhere (other devices, followers writing into a share)."""
        if d.children is None or d.cap is None or d.new or d is self.shared:
            return
        if not force and trio.current_time() - d.refreshed < REFRESH_AFTER:
            return
        async with d.publish_lock:  # never in the middle of this folder's publish
            remote, siblings = await self.volume.load_folder(d.cap, missing_ok=d is self.root)
            d.refreshed = trio.current_time()
            if remote.seq > d.seq or siblings:
                self._merge(d, remote)
                if siblings and isinstance(d.cap, WriteCap):
                    self.touch_dir(d, times=False)  # publish the merge so the siblings stop there

    def want_refresh(self, d: DirNode) -> None:
        """Ask the background refresher to read `d` again (opening a folder does, after REFRESH_AFTER)."""
        if d.children is not None and trio.current_time() - d.refreshed >= REFRESH_AFTER:
            self.refresh_wanted[d] = None
            self.refresh_event.set()

    async def sync_path(self, node: Node) -> None:
        """fsync: upload `node`'s data if needed, then publish every changed directory above it."""
        if isinstance(node, FileNode) and node.dirty:
            await self.upload_files([node])
        d = node if isinstance(node, DirNode) else node.parent
        while d is not None and (d.dirty or d.new):
            await self.publish(d)
            d = d.parent
        await trio.to_thread.run_sync(self.journal.sync)

    async def sync_dir(self, d: DirNode) -> None:
        """fsync of a folder: its entries as they are now are on the network when this returns.

        The data of dirty files directly in it is uploaded first, so their
        entries can be published (a file whose data is not stored is left out
        of a published version); then the folder and every changed folder
        above it are published, and the journal is synced.
        """
        if d.parent is None and d is not self.root:
            return  # removed: nothing links it any more
        if d.children is not None:
            await self.upload_files([n for n in d.children.values() if isinstance(n, FileNode) and n.dirty])
        node: DirNode | None = d
        while node is not None:
            if node.dirty or node.new:
                await self.publish(node)
            node = node.parent
        await trio.to_thread.run_sync(self.journal.sync)

    async def flush_all(self) -> None:
        """Upload every dirty file and publish every changed directory (unmount, `sync`)."""
        for _ in range(5):
            self.dirty_files -= {f for f in self.dirty_files if f.parent is None}
            await self.upload_files(list(self.dirty_files))
            await self.publish_dirty()
            if not self.dirty_files and not self.dirty_dirs:
                break
        await trio.to_thread.run_sync(self.journal.sync)

    async def publish_dirty(self) -> None:
        """Publish every changed directory: deepest first, those at one depth concurrently."""
        self.dirty_dirs -= {d for d in self.dirty_dirs if d.parent is None and d is not self.root}
        by_depth: dict[int, list[DirNode]] = {}
        for d in self.dirty_dirs:
            by_depth.setdefault(self._depth(d), []).append(d)
        limit = trio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(d: DirNode) -> None:
            async with limit:
                await self.publish(d)

        for depth in sorted(by_depth, reverse=True):
            async with trio.open_nursery() as nursery:
                for d in by_depth[depth]:
                    nursery.start_soon(one, d)

    def _depth(self, d: Node) -> int:
        depth = 0
        while d.parent is not None:
            d = d.parent
            depth += 1
        return depth

    def pending(self) -> tuple[int, int, int]:
        """(dirty files, their bytes, directories waiting) for `pluto status`."""
        files = [f for f in self.dirty_files if f.parent is not None]
        # Journaled folders not replayed yet hold changes too (replay_journal is on its way to them).
        return len(files), sum(f.size for f in files), len(self.dirty_dirs) + len(self._journal_dirs)


def _row_state(n: Node) -> tuple:
    """What a publish may change of a node's journal row."""
    return (n.vv, n.changed, n.on_network, n.held_vv if isinstance(n, FileNode) else None)
