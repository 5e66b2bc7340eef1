"""BLAKE3 Merkle trees over fixed-size leaves of a fragment.

A fragment's id *is* its Merkle root, so the 32 bytes a client keeps to audit
a storage peer are the same bytes it uses to fetch the fragment. A peer proves
it still holds a fragment by returning one leaf and the sibling hashes up to
the root (a storage challenge); the client needs no local copy to check it.

Domain separation: leaves, inner nodes and the final root each hash under a
distinct one-byte prefix, so a leaf can never be passed off as a node (the
second-preimage trick on naive Merkle trees). The root binds the fragment's
length, so a truncated fragment never verifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import blake3

LEAF_SIZE = 16 * 1024
HASH_SIZE = 32
_LEAF = b"\x00"
_NODE = b"\x01"
_ROOT = b"\x02"


def leaf_hash(leaf: bytes | bytearray | memoryview) -> bytes:
    """Hash one leaf (at most LEAF_SIZE bytes)."""
    h = blake3.blake3(_LEAF)
    h.update(leaf)
    return h.digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(_NODE + left + right).digest()


def _root_hash(top: bytes, length: int) -> bytes:
    return blake3.blake3(_ROOT + length.to_bytes(8, "big") + top).digest()


def leaf_count(length: int) -> int:
    """Number of leaves of a fragment of `length` bytes (an empty one has one empty leaf)."""
    return max(1, -(-length // LEAF_SIZE))


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """All levels of the tree, leaves first; an odd last node is promoted unchanged."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [_node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


@dataclass
class MerkleBuilder:
    """Computes a fragment's root incrementally, as its bytes stream in."""

    length: int = 0
    _leaves: list[bytes] = field(default_factory=list)
    _partial: bytearray = field(default_factory=bytearray)

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next bytes of the fragment."""
        view = memoryview(data)
        self.length += len(view)
        if self._partial:
            take = min(LEAF_SIZE - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) == LEAF_SIZE:
                self._leaves.append(leaf_hash(self._partial))
                self._partial.clear()
        full = len(view) - len(view) % LEAF_SIZE
        for off in range(0, full, LEAF_SIZE):
            self._leaves.append(leaf_hash(view[off : off + LEAF_SIZE]))
        self._partial += view[full:]

    def leaves(self) -> list[bytes]:
        """Leaf hashes of everything fed so far (the last leaf may be short)."""
        leaves = list(self._leaves)
        if self._partial or not leaves:
            leaves.append(leaf_hash(self._partial))
        return leaves

    def root(self) -> bytes:
        """The 32-byte root (the fragment id) of everything fed so far."""
        return _root_hash(_levels(self.leaves())[-1][0], self.length)


def merkle_root(data: bytes | memoryview) -> bytes:
    """Root of a whole fragment held in memory."""
    builder = MerkleBuilder()
    builder.update(data)
    return builder.root()


def merkle_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the top, for a storage challenge.

    A promoted odd node has no sibling at that level; the verifier recomputes
    the same shape from the leaf count, so no placeholder is sent.
    """
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} out of range 0..{len(leaves) - 1}")
    path = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def verify_proof(root: bytes, length: int, index: int, leaf: bytes, path: list[bytes]) -> bool:
    """Check that `leaf` is leaf `index` of the fragment whose id is `root`."""
    count = leaf_count(length)
    if not 0 <= index < count:
        return False
    expected_len = LEAF_SIZE if index < count - 1 else length - LEAF_SIZE * (count - 1)
    if len(leaf) != expected_len or any(len(p) != HASH_SIZE for p in path):
        return False
    node = leaf_hash(leaf)
    width = count
    steps = iter(path)
    try:
        while width > 1:
            sibling = index ^ 1
            if sibling < width:
                other = next(steps)
                node = _node_hash(other, node) if index & 1 else _node_hash(node, other)
            index //= 2
            width = (width + 1) // 2
    except StopIteration:
        return False
    if next(steps, None) is not None:
        return False
    return _root_hash(node, length) == root
