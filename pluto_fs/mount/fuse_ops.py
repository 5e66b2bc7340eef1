"""pyfuse3 operations: POSIX calls mapped onto the namespace, and fsync onto the write-back.

Every handler answers with data or a FUSEError(errno); nothing else escapes
to the kernel (pluto_fs/mount/fuse_errors.py has the policy). Network waits are
bounded by the configured timeout: a peer that does not answer turns into
EIO/ETIMEDOUT and a log line, never a hang.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from cryptree.caps import WriteCap
from cryptree.dirnode import MAX_NAME_BYTES
from cryptree.errors import CryptreeError
from pluto_fs.errors import PlutoError
from pluto_fs.mount.fuse_errors import fuse_errors, local_op, never_raises
from pluto_fs.writeback.namespace import Namespace
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, SymlinkNode, mode_of
from pluto_fs.writeback.write_back import WriteBack
from transport.errors import TransportError

log = logging.getLogger(__name__)

XATTR_NAMESPACE = "user."
XATTR_MAX_VALUE = 64 * 1024
BLOCK = 4096
ENTRY_TIMEOUT = 1.0  # seconds the kernel may trust a name lookup (found or not)
ATTR_TIMEOUT = 1.0  # seconds the kernel may trust attributes
RMDIR_REFRESH_TIMEOUT = 3.0  # seconds rmdir waits to learn whether another writer filled the folder


def _name(raw: bytes) -> str:
    """A name from the kernel as text; pluto stores UTF-8 names only."""
    if len(raw) > MAX_NAME_BYTES:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EILSEQ) from None


@dataclass
class Handle:
    """An open file: the node, and the local copy's descriptor when there is one."""

    node: FileNode
    fd: int | None
    writable: bool


@dataclass
class DirHandle:
    """An open directory: its node (fsyncdir publishes it) and the listing taken at opendir."""

    node: DirNode
    listing: list[tuple[bytes, Node]]


class PlutoOperations(pyfuse3.Operations):
    """The FUSE front of a mounted volume."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, namespace: Namespace, write_back: WriteBack, op_timeout: float = 30.0,
                 statfs_source: Callable | None = None) -> None:
        super().__init__()
        self.namespace = namespace
        self.write_back = write_back
        self.op_timeout = op_timeout
        self.statfs_source = statfs_source
        self._handles: dict[int, Handle] = {}
        self._dir_handles: dict[int, DirHandle] = {}
        self._next_fh = 1

    # ---- helpers -----------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self.namespace.inodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> DirNode:
        node = self._node(ino)
        if not isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _writable_dir(self, ino: int) -> DirNode:
        d = self._dir(ino)
        if not isinstance(d.cap, WriteCap):
            raise pyfuse3.FUSEError(errno.EACCES)
        if d.parent is None and d is not self.namespace.root:
            raise pyfuse3.FUSEError(errno.ENOENT)  # removed while we held it
        return d

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that hands the kernel a new reference to `node`."""
        node.lookups += 1
        return self.attrs(node)

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """Kernel attributes of a node."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = mode_of(node)
        if isinstance(node, DirNode) and not isinstance(node.cap, WriteCap):
            a.st_mode &= ~0o222  # read-only share: say so
        a.st_uid, a.st_gid = node.uid, node.gid
        if isinstance(node, FileNode):
            size = node.size
        elif isinstance(node, SymlinkNode):
            size = len(node.target)
        else:
            size = BLOCK
        a.st_size = size
        detached = node.parent is None and node is not self.namespace.root
        a.st_nlink = 0 if detached else 2 if isinstance(node, DirNode) else 1
        a.st_blksize = 128 * 1024
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = node.atime_ns, node.mtime_ns, node.ctime_ns
        return a

    # ---- lookup and attributes ---------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        d = self._dir(parent_inode)
        if name == b".":
            return self.entry(d)
        if name == b"..":
            return self.entry(d.parent or d)
        kids = await self.namespace.children(d)
        try:
            text = _name(name)
        except pyfuse3.FUSEError as exc:
            if exc.errno == errno.EILSEQ:
                raise pyfuse3.FUSEError(errno.ENOENT) from None  # such a name cannot exist here
            raise
        node = kids.get(text)
        if node is None:
            return self.negative_entry()
        return self.entry(node)

    @staticmethod
    def negative_entry() -> pyfuse3.EntryAttributes:
        """"No such name", cached by the kernel like a positive entry (st_ino 0).

        rsync looks a new name up three times (stat, open, rename target);
        the kernel drops the negative entry as soon as the name is created
        through this mount, and names appearing from elsewhere (shares) may
        show up as late as entries may change anyway.
        """
        a = pyfuse3.EntryAttributes()
        a.st_ino = 0
        a.entry_timeout = ENTRY_TIMEOUT
        return a

    @local_op
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self.attrs(self._node(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if not node.writable or (isinstance(node, DirNode) and not isinstance(node.cap, WriteCap)):
            raise pyfuse3.FUSEError(errno.EACCES)
        if isinstance(node, DirNode):
            await self.namespace.children(node)  # its journal rows are written whole: they need its entries
        before = (node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns)
        if fields.update_size:
            if not isinstance(node, FileNode):
                raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, DirNode) else errno.EINVAL)
            self.namespace.check_space(max(0, attr.st_size - node.size))
            path = await self.namespace.materialize(node, truncate=attr.st_size == 0)
            os.truncate(path, attr.st_size)
            node.size = attr.st_size
            self.namespace.mark_written(node)
        if fields.update_mode:
            node.mode = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        # A size change was journaled by mark_written; a chmod to the same mode changes only the ctime.
        self.namespace.touch_meta(node, record=before != (node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns))
        if fields.update_ctime:
            node.ctime_ns = attr.st_ctime_ns
        return self.attrs(node)

    @local_op
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if not isinstance(node, SymlinkNode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @never_raises
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            node = self.namespace.inodes.get(ino)
            if node is not None:
                node.lookups = max(0, node.lookups - count)
                self.namespace.release_if_unused(node)

    # ---- directories -----------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        d = self._dir(inode)
        kids = await self.namespace.children(d)
        self.write_back.want_refresh(d)  # changes made elsewhere show up at the next listing
        fh = self._fh()
        listing = [(b".", d), (b"..", d.parent or d)]
        listing += sorted(((n.name.encode(), n) for n in kids.values()), key=lambda x: x[0])
        self._dir_handles[fh] = DirHandle(d, listing)
        return fh

    @local_op
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        h = self._dir_handles.get(fh)
        entries = h.listing if h is not None else []
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs(node), i + 1):
                break
            node.lookups += 1  # readdirplus: each entry the kernel accepted is a lookup

    @never_raises
    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        d = self._writable_dir(parent_inode)
        text = _name(name)
        if text in await self.namespace.children(d):
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = self.namespace.add_dir(d, text, stat.S_IMODE(mode) & ~ctx.umask, ctx.uid, ctx.gid)
        return self.entry(node)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        d = self._writable_dir(parent_inode)
        node = (await self.namespace.children(d)).get(_name(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if node is self.namespace.shared:
            raise pyfuse3.FUSEError(errno.EACCES)
        await self._refresh_quietly(node)  # another writer may have put something in it meanwhile
        if await self.namespace.children(node):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        if node.parent is not d:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.namespace.detach(node)

    async def _refresh_quietly(self, d: DirNode) -> None:
        """Read `d` again from the network before a decision that needs its latest state; offline, the local
        view decides (bounded: the network being away must not make the call hang)."""
        with trio.move_on_after(min(self.op_timeout, RMDIR_REFRESH_TIMEOUT)):
            try:
                await self.write_back.refresh(d, force=True)
            except (PlutoError, CryptreeError, TransportError) as exc:
                log.info("could not read a folder again before removing it (%s); going by the local view", exc)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        d = self._writable_dir(parent_inode)
        node = (await self.namespace.children(d)).get(_name(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.namespace.detach(node)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        d = self._writable_dir(parent_inode)
        text = _name(name)
        if text in await self.namespace.children(d):
            raise pyfuse3.FUSEError(errno.EEXIST)
        if not target or len(target) > 4095:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG if target else errno.ENOENT)
        return self.entry(self.namespace.add_symlink(d, text, target, ctx.uid, ctx.gid))

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Entries hold their file's content directly (cryptree has no shared inode objects),
        # so a second name could not follow changes made through the first. Refuse cleanly.
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        src_dir = self._writable_dir(parent_inode_old)
        dst_dir = self._writable_dir(parent_inode_new)
        old, new = _name(name_old), _name(name_new)
        node = (await self.namespace.children(src_dir)).get(old)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node is self.namespace.shared or self.namespace.share_root(node) is node:
            raise pyfuse3.FUSEError(errno.EACCES)
        if self.namespace.share_root(src_dir) is not self.namespace.share_root(dst_dir):
            raise pyfuse3.FUSEError(errno.EXDEV)  # another owner's tree: copy, then delete
        existing = (await self.namespace.children(dst_dir)).get(new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if existing is node:
            return
        if existing is not None and flags & pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if isinstance(node, DirNode):
            up: DirNode | None = dst_dir
            while up is not None:  # no moving a directory into itself
                if up is node:
                    raise pyfuse3.FUSEError(errno.EINVAL)
                up = up.parent
        if existing is not None:
            if isinstance(existing, DirNode):
                if not isinstance(node, DirNode):
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if await self.namespace.children(existing):
                    raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            elif isinstance(node, DirNode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            self.namespace.detach(existing)
        if isinstance(node, DirNode) and node.cap is not None and not isinstance(node.cap, WriteCap):
            raise pyfuse3.FUSEError(errno.EACCES)
        self.namespace.rename(node, dst_dir, new)

    # ---- files ---------------------------------------------------------------------------

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        d = self._writable_dir(parent_inode)
        text = _name(name)
        existing = (await self.namespace.children(d)).get(text)
        if existing is not None:
            if flags & os.O_EXCL:
                raise pyfuse3.FUSEError(errno.EEXIST)
            info = await self.open(existing.ino, flags, ctx)
            return info, self.entry(existing)
        node = self.namespace.create_file(d, text, stat.S_IMODE(mode) & ~ctx.umask, ctx.uid, ctx.gid)
        return self._open_handle(node, writable=True), self.entry(node)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Regular files only (GNU tar creates them this way); devices, FIFOs and
        # sockets have no meaning on storage shared across machines.
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        d = self._writable_dir(parent_inode)
        text = _name(name)
        if text in await self.namespace.children(d):
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = self.namespace.create_file(d, text, stat.S_IMODE(mode) & ~ctx.umask, ctx.uid, ctx.gid)
        return self.entry(node)

    def _open_handle(self, node: FileNode, writable: bool) -> pyfuse3.FileInfo:
        fd = None
        if node.cache_id is not None:
            path = self.namespace.cache_path(node.cache_id)
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        fh = self._fh()
        self._handles[fh] = Handle(node, fd, writable)
        node.open_handles += 1
        if writable:
            node.writers += 1
        info = pyfuse3.FileInfo(fh=fh)
        info.keep_cache = not node.dirty and not writable
        return info

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not isinstance(node, FileNode):
            raise pyfuse3.FUSEError(errno.ELOOP)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            if not node.writable:
                raise pyfuse3.FUSEError(errno.EACCES)
            truncate = bool(flags & os.O_TRUNC)
            path = await self.namespace.materialize(node, truncate=truncate)
            if truncate:
                os.truncate(path, 0)
                node.size = 0
                self.namespace.mark_written(node)
        return self._open_handle(node, writable)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handles[fh]
        node = h.node
        if h.fd is None and node.cache_id is not None:
            h.fd = os.open(self.namespace.cache_path(node.cache_id), os.O_RDONLY)
        if h.fd is not None:
            return os.pread(h.fd, size, off)
        if node.content is None or off >= node.size:
            return b""
        return await self.namespace.read_published(node, off, size)

    @local_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles[fh]
        if not h.writable or h.fd is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        self.namespace.check_space(max(0, off + len(buf) - h.node.size))
        written = os.pwrite(h.fd, buf, off)
        node = h.node
        node.size = max(node.size, off + written)
        self.namespace.mark_written(node)
        return written

    @local_op
    async def flush(self, fh: int) -> None:
        return None

    @functools.partial(fuse_errors, bounded=False)
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.write_back.sync_path(self._handles[fh].node)

    @functools.partial(fuse_errors, bounded=False)
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        # Like fsync: returns once the folder's entries (renames, removals, new files with their
        # data) are published, or fails; every network wait inside is bounded by the RPC timeouts.
        h = self._dir_handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        await self.write_back.sync_dir(h.node)

    @never_raises
    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        if h.fd is not None:
            os.close(h.fd)
        node = h.node
        node.open_handles -= 1
        if h.writable:
            node.writers -= 1
            self.namespace.note_change()  # a closed file is ready to upload
        self.namespace.release_if_unused(node)

    # ---- extended attributes -------------------------------------------------------------

    def _xattr_name(self, name: bytes) -> str:
        text = name.decode("utf-8", "surrogateescape")
        if not text.startswith(XATTR_NAMESPACE):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        return text

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._node(inode)
        key = self._xattr_name(name)
        if not node.writable:
            raise pyfuse3.FUSEError(errno.EACCES)
        if len(value) > XATTR_MAX_VALUE:
            raise pyfuse3.FUSEError(errno.E2BIG)
        if isinstance(node, DirNode):
            await self.namespace.children(node)  # its journal rows are written whole: they need its entries
        node.xattrs[key] = bytes(value)
        self.namespace.touch_meta(node)

    @local_op
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        text = name.decode("utf-8", "surrogateescape")
        value = node.xattrs.get(text)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @local_op
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [k.encode() for k in self._node(inode).xattrs]

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._node(inode)
        text = name.decode("utf-8", "surrogateescape")
        if text not in node.xattrs:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if not node.writable:
            raise pyfuse3.FUSEError(errno.EACCES)
        if isinstance(node, DirNode):
            await self.namespace.children(node)  # its journal rows are written whole: they need its entries
        del node.xattrs[text]
        self.namespace.touch_meta(node)

    # ---- filesystem ------------------------------------------------------------------------

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        total, free = await self.statfs_source() if self.statfs_source else (1 << 40, 1 << 40)
        s.f_bsize = BLOCK
        s.f_frsize = BLOCK
        s.f_blocks = max(1, total // BLOCK)
        s.f_bfree = s.f_bavail = min(s.f_blocks, max(0, free // BLOCK))
        s.f_files = len(self.namespace.inodes) + 1_000_000
        s.f_ffree = s.f_favail = 1_000_000
        s.f_namemax = MAX_NAME_BYTES
        return s
