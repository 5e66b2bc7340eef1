"""Path-level operations on a volume: walk, list, read, and copy whole trees in and out.

Used by the CLI (`pluto put/get/ls`) and the tests; the FUSE driver works on
the same Volume primitives but keeps its own inode table.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from cryptree.caps import ReadCap, WriteCap
from cryptree.dirnode import (
    DirAttrs,
    Directory,
    DirEntry,
    DirLink,
    Symlink,
    child_write_cap,
    link_child,
    new_directory_cap,
    validate_name,
)
from cryptree.errors import CryptreeError
from cryptree.filenode import FileRef
from pluto_fs.errors import NotFound, PlutoError
from pluto_fs.volume.volume import Volume

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]  # (path, bytes) after each file


def split_path(path: str) -> list[str]:
    """'/a/b/' -> ['a', 'b']; every component must be a legal name."""
    parts = [p for p in path.split("/") if p]
    for p in parts:
        try:
            validate_name(p)
        except CryptreeError as exc:
            raise PlutoError(f"bad path {path!r}: {exc}") from None
    return parts


def child_cap(parent: WriteCap | ReadCap, entry: DirEntry) -> WriteCap | ReadCap:
    """The capability for the sub-folder `entry` of the folder opened with `parent`.

    Write access to the parent unwraps the child's write key when the link
    carries one (cryptree/dirnode.py `child_write_cap`); otherwise, and for
    a read-only parent, the link's read cap.
    """
    assert isinstance(entry.child, DirLink)
    if isinstance(parent, WriteCap) and entry.child.wrapped_writer is not None:
        return child_write_cap(parent, entry)
    return entry.child.cap


@dataclass
class Tree:
    """A directory tree seen through one capability (the user's root, or a shared folder)."""

    volume: Volume
    root: WriteCap | ReadCap

    async def open_dir(self, path: str) -> tuple[WriteCap | ReadCap, Directory]:
        """The capability and contents of the directory at `path`."""
        cap = self.root
        directory = await self.volume.load_dir(cap, missing_ok=cap is self.root)
        walked = ""
        for name in split_path(path):
            walked += "/" + name
            entry = directory.get(name)
            if entry is None:
                raise NotFound(f"{walked}: no such file or directory")
            if entry.kind != "dir":
                raise NotFound(f"{walked}: not a directory")
            cap = child_cap(cap, entry)
            directory = await self.volume.load_dir(cap)
        return cap, directory

    async def lookup(self, path: str) -> DirEntry:
        """The entry at `path` (not the root)."""
        parts = split_path(path)
        if not parts:
            raise PlutoError("the root folder has no entry of its own")
        _, parent = await self.open_dir("/".join(parts[:-1]))
        entry = parent.get(parts[-1])
        if entry is None:
            raise NotFound(f"{path}: no such file or directory")
        return entry

    async def read_file(self, path: str) -> bytes:
        """A whole file's bytes."""
        entry = await self.lookup(path)
        if entry.kind != "file":
            raise PlutoError(f"{path}: not a regular file")
        return await self.volume.read_all(entry.child, entry.size)  # type: ignore[arg-type]

    # ---- copying in ------------------------------------------------------------

    async def upload(self, local: Path, remote: str = "/", progress: Progress | None = None) -> int:
        """Copy the local directory `local` into the folder at `remote` (merging); return files stored."""
        cap, directory = await self.open_dir(remote)
        if not isinstance(cap, WriteCap):
            raise PlutoError(f"{remote}: this folder is read-only for you")
        return await self._upload_dir(Path(local), cap, directory, progress, self.volume.upload_mark())

    async def _upload_dir(
        self, local: Path, cap: WriteCap, existing: Directory, progress: Progress | None, mark: int
    ) -> int:
        entries = existing.by_name()
        mine: dict[str, DirEntry] = {}  # what this upload puts in the folder, by name
        count = 0
        with os.scandir(local) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            name = item.name
            try:
                validate_name(name)
            except CryptreeError as exc:
                log.warning("skipping %s: %s", item.path, exc)
                continue
            st = item.stat(follow_symlinks=False)
            common = dict(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                          atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
            old = entries.get(name)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(os.fsencode(item.path))
                mine[name] = DirEntry(name, Symlink(target), size=len(target), **common)
            elif stat.S_ISDIR(st.st_mode):
                if old is not None and old.kind == "dir":
                    child = child_cap(cap, old)
                    if not isinstance(child, WriteCap):
                        raise PlutoError(f"{item.path}: the folder there is read-only for you")
                    child_dir = await self.volume.load_dir(child)
                else:
                    child, child_dir = new_directory_cap(), Directory(0, None, ())
                count += await self._upload_dir(Path(item.path), child, child_dir, progress, mark)
                mine[name] = DirEntry(name, link_child(cap, child), size=0, **common)
            elif stat.S_ISREG(st.st_mode):
                data = await trio.Path(item.path).read_bytes()
                previous = None
                if old is not None and isinstance(old.child, FileRef):
                    previous = await self.volume.manifest(old.child, old.size)
                content = await self.volume.store(data, previous)
                mine[name] = DirEntry(name, content, size=len(data), **common)
                count += 1
                if progress:
                    progress(item.path, len(data))
            else:
                log.warning("skipping %s: only files, folders and symlinks are stored", item.path)
        st = await trio.Path(local).stat()
        attrs = DirAttrs(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)

        def change(current: dict[str, DirEntry]) -> DirAttrs:
            current.update(mine)
            return attrs

        await self.volume.update_dir(cap, change, since=mark, base=existing)
        return count

    # ---- copying out -----------------------------------------------------------

    async def download(self, remote: str, local: Path, progress: Progress | None = None) -> int:
        """Copy the folder at `remote` into the local directory `local`; return files written."""
        cap, directory = await self.open_dir(remote)
        await trio.Path(local).mkdir(parents=True, exist_ok=True)
        return await self._download_dir(cap, directory, Path(local), progress)

    async def _download_dir(
        self, cap: WriteCap | ReadCap, directory: Directory, local: Path, progress: Progress | None
    ) -> int:
        count = 0
        for entry in directory.entries:
            target = local / entry.name
            if isinstance(entry.child, Symlink):
                os.symlink(entry.child.target, os.fsencode(target))
            elif isinstance(entry.child, DirLink):
                child = child_cap(cap, entry)
                target.mkdir(exist_ok=True)
                count += await self._download_dir(child, await self.volume.load_dir(child), target, progress)
            else:
                data = await self.volume.read_all(entry.child, entry.size)
                await trio.Path(target).write_bytes(data)
                count += 1
                if progress:
                    progress(str(target), len(data))
            if not isinstance(entry.child, Symlink):
                os.chmod(target, entry.mode)
            os.utime(target, ns=(entry.atime_ns, entry.mtime_ns), follow_symlinks=False)
        if directory.attrs is not None:
            os.chmod(local, directory.attrs.mode)
            os.utime(local, ns=(directory.attrs.atime_ns, directory.attrs.mtime_ns))
        return count
