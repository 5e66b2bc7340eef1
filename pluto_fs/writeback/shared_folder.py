"""The virtual `shared/` folder in the root of the mount: what others share with us, by owner.

`shared/<owner>` is the owner's sharing folder for us (read-only); folders
shared writably come with a sealed write capability that upgrades their
entry there. Nothing under `shared/` itself is ever published: the folder
and the owners' folders are the mount's own view, rebuilt from the grants.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptree.caps import ReadCap, WriteCap
from pluto_fs.writeback.nodes import DirNode, InodeTable, Node, now_ns

SHARED_NAME = "shared"

# owner -> (their sharing folder for us, write capabilities of folders shared writably, by slot key)
Shares = Callable[[], dict[str, tuple[ReadCap, dict[bytes, WriteCap]]]]


class SharedFolder:
    """The `shared/` folder of one mount, shown once someone shares with us."""

    def __init__(self, shares: Shares | None, inodes: InodeTable, root: DirNode) -> None:
        self._shares = shares
        self._inodes = inodes
        self._root = root
        self.node: DirNode | None = None  # the folder itself, once shown

    def _current(self) -> dict[str, tuple[ReadCap, dict[bytes, WriteCap]]]:
        return self._shares() if self._shares is not None else {}

    def show_in_root(self) -> None:
        """Show `shared/` in the loaded root when someone shares with us (it hides a real entry of that name)."""
        if self._shares is None or not self._shares():
            return
        root = self._root
        if self.node is None:
            now = now_ns()
            self.node = DirNode(self._inodes.new_ino(), SHARED_NAME, root, 0o555, root.uid, root.gid,
                                now, now, now, cap=None)
            self._inodes.add(self.node)
        assert root.children is not None
        root.children[SHARED_NAME] = self.node

    def load(self, d: DirNode) -> None:
        """Fill `shared/` (`d`) with one read-only folder per owner."""
        kids: dict[str, Node] = {}
        for owner, (share_dir, _) in self._current().items():
            node = DirNode(self._inodes.new_ino(), owner, d, 0o555, d.uid, d.gid, d.atime_ns, d.mtime_ns,
                           d.ctime_ns, cap=share_dir)
            kids[owner] = node
            self._inodes.add(node)
        d.children = kids

    def is_owner_folder(self, d: DirNode) -> bool:
        """Whether `d` is a `shared/<owner>` folder."""
        return self.node is not None and d.parent is self.node

    def upgrade_write_shares(self, owner_node: DirNode) -> None:
        """Folders shared with us writably: the owner's sharing folder lists them read-only; the
        write capability came in a sealed grant and upgrades the matching entry."""
        assert owner_node.children is not None
        _, writable = self._current().get(owner_node.name, (None, {}))
        for node in owner_node.children.values():
            if isinstance(node, DirNode) and node.cap is not None and node.cap.writer in writable:
                node.cap = writable[node.cap.writer]
                node.mode |= 0o200

    def share_root(self, node: Node) -> Node | None:
        """The shared folder `node` lies in (a child of shared/<owner>), or None for our own tree."""
        while node.parent is not None:
            if node.parent.parent is self.node and self.node is not None:
                return node
            node = node.parent
        return None

    def virtual_names(self, d: DirNode) -> set[str]:
        """Names in `d` that are the mount's own (`shared/` in the root), never published."""
        if d is self._root and self.node is not None and d.children is not None \
                and d.children.get(SHARED_NAME) is self.node:
            return {SHARED_NAME}
        return set()

    def reload(self, busy: bool) -> None:
        """Forget what was loaded under `shared/` so the owners' latest versions load on next use;
        skipped while something under it is `busy` (waits to be published). Shows `shared/` in the
        root if someone started sharing with us."""
        if self.node is None:
            if self._root.children is not None:
                self.show_in_root()
            return
        if not busy:
            self.node.children = None
