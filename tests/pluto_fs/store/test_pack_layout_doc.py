"""docs/FORMATS.md stays true for PackLayout: the layout inside the documented pack records parses and maps back."""

from __future__ import annotations

import cbor2

from pluto_fs.store.packs import PackLayout
from tests.formats_doc import hex_examples

DOC_HEX = hex_examples()


def test_the_layout_inside_a_documented_pack_record_parses_and_encodes_back() -> None:
    for name in ("pack-record-v1-body", "pack-record-v2-body"):
        raw = cbor2.loads(DOC_HEX[name])[1]
        layout = PackLayout.from_dict(raw)
        assert (layout.length, layout.k, layout.n, layout.segment_size) == (5000, 2, 3, 4096)
        assert [s.length for s in layout.segments] == [4096, 904]
        assert layout.fragment_length(1) == 452  # ceil(904 / k)
        assert layout.to_dict() == raw
        assert cbor2.dumps([cbor2.loads(DOC_HEX[name])[0], layout.to_dict(), cbor2.loads(DOC_HEX[name])[2]],
                           canonical=True) == DOC_HEX[name]
