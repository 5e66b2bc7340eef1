"""docs/FORMATS.md stays true for a storage peer's on-disk store: its schema and file layout.

Regenerate the blocks after a deliberate change:

    .venv/bin/python -m tests.transport.peer.test_fragment_store_doc
"""

from __future__ import annotations

from pathlib import Path

from cryptree.merkle import merkle_root
from tests.formats_doc import block, text_examples
from transport.peer import fragment_store
from transport.peer.fragment_store import FragmentStore

FRAGMENT = b"fragment bytes"


def build() -> dict[str, tuple[str, str, str]]:
    """Every example: name -> (block kind, value, body as the doc shows it)."""
    schema = fragment_store._SCHEMA.strip()
    fid = merkle_root(FRAGMENT).hex()
    path = f"fragments/{fid[:2]}/{fid}"
    return {"fragment-store-schema": ("sql", schema, schema), "fragment-path": ("text", path, path)}


def render() -> str:
    """The blocks as the doc holds them."""
    return "\n\n".join(block(kind, name, shown) for name, (kind, _, shown) in build().items())


DOC_TEXT = text_examples()


def test_the_doc_holds_exactly_the_examples_the_code_makes() -> None:
    for name, (_, value, _) in build().items():
        assert DOC_TEXT.get(name) == value, f"docs/FORMATS.md example {name!r} differs from what the code makes"


def test_a_stored_fragment_lands_at_the_documented_path_under_the_documented_tables(tmp_path: Path) -> None:
    store = FragmentStore(tmp_path, capacity=1 << 20)
    try:
        upload = store.open_upload()
        upload.write(FRAGMENT)
        upload.finish()
        assert store.commit_upload(upload, merkle_root(FRAGMENT), len(FRAGMENT), b"\x01" * 32)
        assert (tmp_path / DOC_TEXT["fragment-path"]).read_bytes() == FRAGMENT
        with store.db.reading() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        store.close()
    assert tables == {"fragments", "claims", "slots"}
    assert {p.name for p in tmp_path.iterdir()} >= {"fragments", "tmp", "index.sqlite"}


if __name__ == "__main__":
    print(render())
