"""The mount's local copies of file bytes: one cache file per id, in one directory.

A file written through the mount lives here until the write-back has stored
it; a file opened for writing is fetched here first. The journal's `files`
table says which cache files hold data the network does not have yet.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Container
from pathlib import Path

from cryptree.filenode import InlineData
from pluto_fs.volume.volume import Volume
from pluto_fs.writeback.nodes import FileNode


class CacheFiles:
    """Cache files by id in `directory` (created if missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, cache_id: str) -> Path:
        """Where the local copy `cache_id` lives."""
        return self.directory / cache_id

    def create(self) -> str:
        """A new empty cache file; its id."""
        cache_id = uuid.uuid4().hex
        # os.open, not Path.touch: touch tries utime first, a failed syscall and an exception per file.
        os.close(os.open(self.path(cache_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return cache_id

    def holds(self, cache_id: str) -> bool:
        """Whether the cache file `cache_id` exists."""
        return self.path(cache_id).exists()

    def size(self, cache_id: str) -> int:
        """The size in bytes of cache file `cache_id`."""
        return self.path(cache_id).stat().st_size

    def remove(self, cache_id: str) -> None:
        """Delete cache file `cache_id` (if it is there)."""
        self.path(cache_id).unlink(missing_ok=True)

    def remove_all_but(self, keep: Container[str]) -> None:
        """Delete every cache file whose id is not in `keep` (left over from an earlier session)."""
        for f in self.directory.iterdir():
            if f.name not in keep:
                f.unlink(missing_ok=True)

    async def materialize(self, node: FileNode, volume: Volume, truncate: bool = False) -> Path:
        """Make sure `node` has a full local copy (fetched from the network if needed); its path."""
        if node.cache_id is not None and self.holds(node.cache_id):
            return self.path(node.cache_id)
        cache_id = uuid.uuid4().hex
        path = self.path(cache_id)
        # Blocking writes on purpose: a local cache file, filled between network awaits.
        with open(path, "wb") as f:  # noqa: ASYNC230
            if not truncate and node.content is not None and node.size:
                if isinstance(node.content, InlineData):
                    f.write(node.content.data)
                else:
                    manifest = await volume.manifest(node.content, node.size)
                    for ref in manifest.chunks:
                        f.write(await volume.chunk(ref))
        node.cache_id = cache_id
        return path
