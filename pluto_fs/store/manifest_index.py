"""A decoded manifest with cumulative chunk offsets, for reads at any offset in O(log n)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

from cryptree.filenode import ChunkRef, Manifest


@dataclass(frozen=True)
class ManifestIndex:
    """`ends[i]` is the file offset just past chunk i."""

    manifest: Manifest
    ends: tuple[int, ...]

    @classmethod
    def of(cls, manifest: Manifest) -> ManifestIndex:
        """Index a direct manifest."""
        return cls(manifest, tuple(accumulate(c.length for c in manifest.chunks)))

    @property
    def cost(self) -> int:
        """Rough bytes held, for a byte-bounded cache."""
        return 200 * len(self.ends) + 100

    def covering(self, offset: int, size: int) -> Iterator[tuple[ChunkRef, int, int]]:
        """(chunk, start, stop) for each chunk overlapping [offset, offset+size), in order."""
        end = offset + size
        i = bisect_right(self.ends, offset)
        chunks = self.manifest.chunks
        while i < len(chunks) and offset < end:
            start = self.ends[i] - chunks[i].length
            stop = min(self.ends[i], end)
            yield chunks[i], offset - start, stop - start
            offset = stop
            i += 1
