"""The mount's in-memory tree: inodes, folders loaded on first use, and every change made through the mount.

A change is applied here at once (so the next system call sees it) and
recorded in the journal in the same step (journal_rows.py has the rows); the
write-back (write_back.py) publishes it later. This module never talks to the
network except to load a folder and to fetch bytes a reader asks for.

The tree holds what the write-back must drain: `dirty_dirs` (folders with
unpublished changes) and `dirty_files` (files whose bytes are only local), and
wakes it on every change.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import trio

from cryptree.caps import ReadCap, WriteCap
from cryptree.dirnode import (
    DirAttrs,
    Directory,
    DirEntry,
    DirLink,
    Symlink,
    new_directory_cap,
)
from pluto_fs.volume.tree import child_cap
from pluto_fs.volume.volume import Volume
from pluto_fs.writeback.cache_files import CacheFiles
from pluto_fs.writeback.folder_merge import merge_remote
from pluto_fs.writeback.journal import Journal
from pluto_fs.writeback.journal_rows import read_folder_rows, record_change
from pluto_fs.writeback.names import inherit, leave_name, take_name
from pluto_fs.writeback.nodes import DirNode, FileNode, InodeTable, Node, SymlinkNode, now_ns
from pluto_fs.writeback.quota import Quota
from pluto_fs.writeback.shared_folder import SharedFolder, Shares

log = logging.getLogger(__name__)

ROOT_INO = 1


class Namespace:
    """Inode table, folder loading, the virtual `shared/` folder, and changes to the tree."""

    def __init__(self, volume: Volume, journal: Journal, cache_dir: Path, root_cap: WriteCap | ReadCap,
                 shares: Shares | None = None, quota: Quota | None = None) -> None:
        self._volume = volume
        # This device in entries' version vectors (a namespace built without a network, in tests, has none).
        self.tag = volume.writer_tag if volume is not None else bytes(8)
        self._journal = journal
        self._cache = CacheFiles(cache_dir)
        self.quota = quota if quota is not None else Quota()
        now = now_ns()
        self.root = DirNode(ROOT_INO, "", None, 0o755, os.getuid(), os.getgid(), now, now, now, cap=root_cap)
        self.inodes = InodeTable(self.root)
        self._shared = SharedFolder(shares, self.inodes, self.root)
        self.dirty_dirs: set[DirNode] = set()  # folders with changes the network does not have
        self.dirty_files: set[FileNode] = set()  # files whose bytes are only in their cache file
        self._journal_dirs = {w: (seq, attrs, new) for w, _cap, seq, attrs, new in journal.folders()}
        self._pending_files = journal.pending_files()
        self._changed = trio.Event()  # set on every change: wakes the write-back
        # Cache files the journal does not need are left over from an earlier session.
        self._cache.remove_all_but(self._pending_files)

    # ---- waking the write-back ------------------------------------------------------

    def note_change(self) -> None:
        """Something may be ready to write back (a change, a closed file): wake the write-back."""
        self._changed.set()

    async def wait_for_change(self, timeout: float) -> None:
        """Return after the next change (or one since the last call), or after `timeout` seconds."""
        with trio.move_on_after(timeout):
            await self._changed.wait()
        self._changed = trio.Event()

    # ---- loading -----------------------------------------------------------------

    @property
    def shared(self) -> DirNode | None:
        """The virtual `shared/` folder in the root, once someone shares with us."""
        return self._shared.node

    async def children(self, d: DirNode) -> dict[str, Node]:
        """The directory's children, loaded from the journal or the network on first use."""
        if d.children is not None:
            return d.children
        async with d.load_lock:
            if d.children is not None:
                return d.children
            if d is self.shared:
                self._shared.load(d)
                return d.children  # type: ignore[return-value]
            journaled = self._journal_dirs.pop(d.cap.writer, None)
            if journaled is not None:
                seq, attrs, new = journaled
                self._restore(d, seq, attrs, new, self._journal.entries(d.cap.writer))
            else:
                directory, siblings = await self._volume.load_folder(d.cap, missing_ok=d is self.root)
                self._build(d, directory)
                if siblings and isinstance(d.cap, WriteCap):
                    self.touch_dir(d, times=False)  # publish the merge so the siblings stop there
            if d is self.root:
                self._shared.show_in_root()
            elif d.parent is self.shared:
                self._shared.upgrade_write_shares(d)
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
            self.note_change()
        return replayed

    def journaled_folders_waiting(self) -> int:
        """Folders the journal holds changes for that are not loaded (replayed) yet."""
        return len(self._journal_dirs)

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

    def _restore(self, d: DirNode, seq: int, attrs: bytes, new: bool, rows: list[bytes]) -> None:
        """Rebuild a directory from its journal rows (a crash left it unpublished)."""
        d.seq, d.new = seq, new
        kids, files = read_folder_rows(d, attrs, rows, self.inodes.new_ino)
        for restored in files:
            cache_id = restored.cache_id
            if cache_id is not None and cache_id in self._pending_files and self._cache.holds(cache_id):
                file = restored.node
                file.cache_id, file.dirty = cache_id, True
                file.size = self._cache.size(cache_id)
                self.dirty_files.add(file)
                self.quota.pending_grew(file.size)  # replayed lazily: pending from now on
        for node in kids.values():
            self.inodes.add(node)
        d.children = kids
        d.journal_gen = self._journal.generation  # restored from exactly these rows
        d.dirty = True
        self.dirty_dirs.add(d)

    # ---- shared with us ------------------------------------------------------------

    def share_root(self, node: Node) -> Node | None:
        """The shared folder `node` lies in (a child of shared/<owner>), or None for our own tree."""
        return self._shared.share_root(node)

    def refresh_shared(self) -> None:
        """Forget what was loaded under shared/, so the owners' latest versions load on next use.

        Skipped while anything under shared/ waits to be published, so local
        changes to a writable share are never dropped.
        """
        busy = self.shared is not None and any(
            self.share_root(n) is not None for n in list(self.dirty_dirs) + list(self.dirty_files))
        self._shared.reload(busy)

    def virtual_names(self, d: DirNode) -> set[str]:
        """Names in `d` that are the mount's own (the `shared/` folder in the root), never published."""
        return self._shared.virtual_names(d)

    # ---- the network's version of a folder ---------------------------------------------

    def node_from_entry(self, d: DirNode, e: DirEntry) -> Node:
        """A new inode for entry `e` of folder `d`, as the network has it."""
        common = (self.inodes.new_ino(), e.name, d, e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.ctime_ns,
                  dict(e.xattrs))
        if isinstance(e.child, DirLink):
            node: Node = DirNode(*common, cap=child_cap(d.cap, e))
        elif isinstance(e.child, Symlink):
            node = SymlinkNode(*common, target=e.child.target)
        else:
            node = FileNode(*common, content=e.child, content_size=e.size, size=e.size,
                            content_mtime_ns=e.mtime_ns, held_vv=e.version)
        node.vv, node.on_network = e.version, True
        self.inodes.add(node)
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

    def merge(self, d: DirNode, remote: Directory) -> None:
        """Fold the network's newer version of `d` into the tree (folder_merge.py) and journal the result whole."""
        result = merge_remote(self, d, remote)
        d.refreshed = trio.current_time()
        if result.conflicts:
            log.warning("concurrent changes to the same names elsewhere: kept both, as %s", ", ".join(result.conflicts))
        d.journal_gen = None  # rows changed everywhere: written whole at the next change
        if isinstance(d.cap, WriteCap) and (d.dirty or result.ours_left):
            self.touch_dir(d, times=False)

    # ---- recording changes --------------------------------------------------------------

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
        if record:
            record_change(self._journal, d, entry, gone, self.shared)
        self.note_change()

    def touch_meta(self, node: Node, record: bool = True) -> None:
        """Record a metadata change of `node` (kept in its parent's entry, or its own slot for dirs).

        `record=False` when only the ctime changed (a chmod to the mode a file
        already has, which rsync does after every create): it is published but
        costs no journal commit.
        """
        node.ctime_ns = now_ns()
        with self._journal.transaction():
            if isinstance(node, DirNode):
                self.touch_dir(node, times=False, record=record)
            if node.parent is not None:
                self.touch_dir(node.parent, times=False, entry=node, record=record)

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
            self.quota.pending_grew(node.size)  # all of a newly dirty file is pending again
            assert node.cache_id is not None
            with self._journal.transaction():
                self._journal.put_file(node.cache_id, node.size)
                if node.parent is not None:
                    self.touch_dir(node.parent, times=False, entry=node)
        self.note_change()

    # ---- creating, removing, renaming ------------------------------------------------------

    def add_file(self, parent: DirNode, name: str, mode: int, uid: int, gid: int) -> FileNode:
        """A new empty file (with an empty local cache file, so it is writable at once)."""
        mode, gid = inherit(parent, mode, gid, is_dir=False)
        now = now_ns()
        node = FileNode(self.inodes.new_ino(), name, parent, mode, uid, gid, now, now, now)
        node.cache_id = self._cache.create()
        self._attach(parent, node)
        return node

    def create_file(self, parent: DirNode, name: str, mode: int, uid: int, gid: int) -> FileNode:
        """A new empty file that is pending upload (create(2), mknod(2)): one journal commit for both."""
        with self._journal.transaction():
            node = self.add_file(parent, name, mode, uid, gid)
            self.mark_written(node)
        return node

    def add_dir(self, parent: DirNode, name: str, mode: int, uid: int, gid: int) -> DirNode:
        """A new empty directory with fresh keys."""
        mode, gid = inherit(parent, mode, gid, is_dir=True)
        now = now_ns()
        node = DirNode(self.inodes.new_ino(), name, parent, mode, uid, gid, now, now, now,
                       cap=new_directory_cap(), children={}, new=True)
        with self._journal.transaction():  # the parent never names a folder the journal lacks
            self._attach(parent, node)
            self.touch_dir(node, times=False)
        return node

    def add_symlink(self, parent: DirNode, name: str, target: bytes, uid: int, gid: int) -> SymlinkNode:
        """A new symbolic link."""
        now = now_ns()
        node = SymlinkNode(self.inodes.new_ino(), name, parent, 0o777, uid, gid, now, now, now, target=target)
        self._attach(parent, node)
        return node

    def _attach(self, parent: DirNode, node: Node) -> None:
        assert parent.children is not None
        parent.children[node.name] = node
        node.parent = parent
        take_name(parent, node)
        self.inodes.add(node)
        self.touch_dir(parent, entry=node)

    def detach(self, node: Node) -> None:
        """Take `node` out of its directory (unlink, rmdir, or replaced by a rename)."""
        parent = node.parent
        with self._journal.transaction():
            if parent is not None and parent.children is not None and parent.children.get(node.name) is node:
                del parent.children[node.name]
                leave_name(parent, node, self.tag)
                self.touch_dir(parent, gone=node.name)
            node.parent = None
            if isinstance(node, DirNode):
                self.dirty_dirs.discard(node)
                if isinstance(node.cap, WriteCap):
                    # Only empty folders are removed: no row of its own is needed any more.
                    self._journal.drop_folder(node.cap.writer)
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
        self.inodes.drop(node.ino)

    def forget_file(self, node: FileNode) -> None:
        """Drop a detached file's local copy and pending data."""
        self.dirty_files.discard(node)
        if node.cache_id is not None:
            self._cache.remove(node.cache_id)
            self._journal.drop_file(node.cache_id)
            node.cache_id = None

    def rename(self, node: Node, new_parent: DirNode, new_name: str) -> None:
        """Move `node` (the caller has removed any node at the destination)."""
        old_parent = node.parent
        assert old_parent is not None and old_parent.children is not None and new_parent.children is not None
        old_name = node.name
        del old_parent.children[old_name]
        leave_name(old_parent, node, self.tag)
        node.name = new_name
        node.parent = new_parent
        new_parent.children[new_name] = node
        take_name(new_parent, node)
        node.ctime_ns = now_ns()
        with self._journal.transaction():  # one commit: a crash never shows the node in both places or neither
            if new_parent is old_parent:
                self.touch_dir(old_parent, entry=node, gone=old_name)
            else:
                self.touch_dir(old_parent, gone=old_name)
                self.touch_dir(new_parent, entry=node)

    # ---- file data ---------------------------------------------------------------------

    def cache_path(self, cache_id: str) -> Path:
        """Where the local copy `cache_id` lives."""
        return self._cache.path(cache_id)

    async def materialize(self, node: FileNode, truncate: bool = False) -> Path:
        """Make sure the file has a full local copy (fetched from the network if needed)."""
        return await self._cache.materialize(node, self._volume, truncate)

    async def read_published(self, node: FileNode, offset: int, size: int) -> bytes:
        """Bytes of the file's published content, fetched from the network (no local copy needed)."""
        assert node.content is not None
        return await self._volume.read(node.content, offset, size, node.content_size)

    def check_space(self, growth: int) -> None:
        """ENOSPC now, at write time, if the storage exchange cannot take `growth` more bytes
        (QuotaExceeded; quota.py has the rule)."""
        self.quota.check(growth, lambda: sum(f.size for f in self.dirty_files if f.parent is not None))
