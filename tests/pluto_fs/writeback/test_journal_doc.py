"""docs/FORMATS.md stays true for the mount's journal: its schema and row examples are what the code writes and reads.

Regenerate the blocks after a deliberate format change (and bump journal.FORMAT):

    .venv/bin/python -m tests.pluto_fs.writeback.test_journal_doc
"""

from __future__ import annotations

from pathlib import Path

from cryptree.caps import WriteCap
from cryptree.dirnode import DirEntry, Tombstone
from cryptree.filenode import InlineData
from pluto_fs.writeback import journal
from pluto_fs.writeback.journal_rows import (
    RestoredFile,
    entry_row,
    node_from_row,
    own_attrs_row,
    shadow_row,
    tombstone_row,
)
from pluto_fs.writeback.nodes import DirNode, FileNode, SymlinkNode
from tests.formats_doc import annotate_cbor, differing_examples, hex_examples, render_blocks, text_examples

DIR = WriteCap("dir", b"\x11" * 32, b"\x22" * 32)
CHILD = WriteCap("dir", b"\x33" * 32, b"\x44" * 32)
TAG_A = bytes.fromhex("7f3a2b1c00000001")
T = 1_764_772_800_000_000_000
HEAD = ["name", "mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns", "xattrs"]
TAIL = ["vv", "changed", "on_network"]


def _root() -> DirNode:
    return DirNode(1, "", None, 0o755, 1000, 1000, T, T, T, cap=DIR)


def _nodes(root: DirNode) -> tuple[FileNode, DirNode, SymlinkNode]:
    common = (1000, 1000, T, T, T)
    file = FileNode(2, "a.txt", root, 0o644, *common, {"user.k": b"v"}, vv=((TAG_A, 1),), changed=True,
                    content=InlineData(b"hi\n"), content_size=3, content_mtime_ns=T, size=5, cache_id="c0ffee",
                    dirty=True)
    folder = DirNode(3, "docs", root, 0o755, *common, cap=CHILD, new=True, vv=(), changed=True)
    link = SymlinkNode(4, "link", root, 0o777, *common, target=b"a.txt", vv=((TAG_A, 1),), on_network=True)
    return file, folder, link


def _labels(fields: list[str]) -> dict[str, str]:
    return {str(i): name for i, name in enumerate(fields)}


def build() -> dict[str, tuple[str, bytes | str, str]]:
    """Every example: name -> (block kind, value, body as the doc shows it)."""
    root = _root()
    file, folder, link = _nodes(root)
    rows = {
        "journal-row-file": (entry_row(file), ["row kind", *HEAD, "content", "content_size", "size", "cache_id",
                                               *TAIL, "content_mtime_ns", "held_vv"]),
        "journal-row-folder": (entry_row(folder), ["row kind", *HEAD, "cap", "new", *TAIL]),
        "journal-row-symlink": (entry_row(link), ["row kind", *HEAD, "target", *TAIL]),
        "journal-row-deleted": (tombstone_row(Tombstone("old.txt", T, ((TAG_A, 3),))),
                                ["row kind", "name", "deleted_ns", "vv"]),
        "journal-row-shadow": (shadow_row(DirEntry("gone.txt", InlineData(b"x"), size=1, version=((TAG_A, 2),))),
                               ["row kind", "name", "entry (encoded as in a directory)"]),
        "journal-folder-attrs": (own_attrs_row(root), ["mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns",
                                                       "xattrs"]),
    }
    out: dict[str, tuple[str, bytes | str, str]] = {
        name: ("hex", data, annotate_cbor(data, _labels(labels))) for name, (data, labels) in rows.items()}
    schema = journal._SCHEMA.strip()
    out["journal-schema"] = ("sql", schema, schema)
    return out


def render() -> str:
    """The blocks as the doc holds them."""
    return render_blocks(build())


DOC_HEX = hex_examples()
DOC_TEXT = text_examples()


def test_the_doc_holds_exactly_the_examples_the_code_makes() -> None:
    assert differing_examples(build()) == [], "docs/FORMATS.md examples differ from what the code makes"


def test_documented_rows_read_back_to_their_fields_and_encode_the_same(tmp_path: Path) -> None:
    root = _root()
    restored = node_from_row(DOC_HEX["journal-row-file"], 2, root)
    assert isinstance(restored, RestoredFile) and restored.cache_id == "c0ffee"
    file = restored.node
    assert (file.name, file.mode, file.size, file.content_size, file.content) == ("a.txt", 0o644, 5, 3,
                                                                                  InlineData(b"hi\n"))
    assert (file.vv, file.changed, file.on_network, file.xattrs) == (((TAG_A, 1),), True, False, {"user.k": b"v"})
    file.cache_id, file.dirty = restored.cache_id, True
    assert entry_row(file) == DOC_HEX["journal-row-file"]

    folder = node_from_row(DOC_HEX["journal-row-folder"], 3, root)
    assert isinstance(folder, DirNode) and folder.cap == CHILD and folder.new and folder.changed
    assert entry_row(folder) == DOC_HEX["journal-row-folder"]

    link = node_from_row(DOC_HEX["journal-row-symlink"], 4, root)
    assert isinstance(link, SymlinkNode) and link.target == b"a.txt" and link.on_network
    assert entry_row(link) == DOC_HEX["journal-row-symlink"]

    tomb = node_from_row(DOC_HEX["journal-row-deleted"], 0, root)
    assert tomb == Tombstone("old.txt", T, ((TAG_A, 3),))
    assert tombstone_row(tomb) == DOC_HEX["journal-row-deleted"]

    shadow = node_from_row(DOC_HEX["journal-row-shadow"], 0, root)
    assert isinstance(shadow, DirEntry) and shadow.name == "gone.txt" and shadow.version == ((TAG_A, 2),)
    assert shadow_row(shadow) == DOC_HEX["journal-row-shadow"]


def test_the_documented_schema_is_what_a_new_journal_holds(tmp_path: Path) -> None:
    assert journal.FORMAT == 3, "the journal format changed: update docs/FORMATS.md (user_version) and this test"
    j = journal.Journal(tmp_path / "journal.sqlite")
    try:
        assert j.db.execute("PRAGMA user_version").fetchone()[0] == journal.FORMAT
        tables = {r[0] for r in j.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        j.close()
    assert tables == {"folders", "entries", "files"}
    assert all(f"TABLE IF NOT EXISTS {t} " in DOC_TEXT["journal-schema"] for t in tables)


if __name__ == "__main__":
    print(render())
