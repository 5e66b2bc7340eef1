"""docs/FORMATS.md stays true for the RPC messages and peer ids: examples decode, say what the doc says, re-encode.

Regenerate the blocks after a deliberate format change:

    .venv/bin/python -m tests.transport.protocol.test_wire_doc
"""

from __future__ import annotations

import base64

from tests.formats_doc import (
    annotate_cbor,
    annotate_fields,
    differing_examples,
    hex_examples,
    render_blocks,
    text_examples,
)
from transport.protocol import wire
from transport.protocol.peer_id import parse_peer_id, peer_id_text
from transport.protocol.rpc import _piece_header

WRITER = bytes(range(32))
PAYLOAD = b"\xee" * 16
SIGNATURE = b"\x5a" * 64
PIECE = b"fragment bytes"
PEER_KEY = bytes(range(0x80, 0xA0))


def build() -> dict[str, tuple[str, bytes | str, str]]:
    """Every example: name -> (block kind, value, body as the doc shows it)."""
    out: dict[str, tuple[str, bytes | str, str]] = {}
    messages = {
        "rpc-request": wire.request(7, "get_slot", {"writer": WRITER}),
        "rpc-result": wire.result(7, {"seq": 3, "payload": PAYLOAD, "signature": SIGNATURE}),
        "rpc-error": wire.error(7, "not_found", "no such slot here"),
        "rpc-up-data": _piece_header(wire.UP_DATA, 8, len(PIECE)) + PIECE,
        "rpc-up-end": wire.encode([wire.UP_END, 8]),
        "rpc-down-data": _piece_header(wire.DOWN_DATA, 9, len(PIECE)) + PIECE,
    }
    names = {"0": "kind", "1": "id"}
    for name, data in messages.items():
        out[name] = ("hex", data, annotate_cbor(data, names | {"2": "method" if name == "rpc-request" else ""}))
    text = peer_id_text(PEER_KEY)
    out["peer-id"] = ("text", text, text)
    raw = b"\xec\x01" + PEER_KEY
    out["peer-id-bytes"] = ("hex", raw, annotate_fields([(raw[:2], "multicodec varint 0xec: x25519-pub"),
                                                         (raw[2:], "X25519 public key")]))
    return out


def render() -> str:
    """The blocks as the doc holds them."""
    return render_blocks(build())


DOC_HEX = hex_examples()
DOC_TEXT = text_examples()


def test_the_doc_holds_exactly_the_examples_the_code_makes() -> None:
    assert differing_examples(build()) == [], "docs/FORMATS.md examples differ from what the code makes"


def test_documented_messages_decode_to_their_fields_and_encode_back() -> None:
    msg = wire.decode(DOC_HEX["rpc-request"])
    assert (msg.kind, msg.id, msg.method, msg.args) == (wire.REQUEST, 7, "get_slot", {"writer": WRITER})
    assert wire.request(msg.id, msg.method, msg.args) == DOC_HEX["rpc-request"]

    msg = wire.decode(DOC_HEX["rpc-result"])
    assert (msg.kind, msg.id) == (wire.RESULT, 7)
    assert msg.args == {"seq": 3, "payload": PAYLOAD, "signature": SIGNATURE}
    assert wire.result(msg.id, msg.args) == DOC_HEX["rpc-result"]

    msg = wire.decode(DOC_HEX["rpc-error"])
    assert (msg.kind, msg.id, msg.code, msg.text) == (wire.ERROR, 7, "not_found", "no such slot here")
    assert wire.error(msg.id, msg.code, msg.text) == DOC_HEX["rpc-error"]

    for name, kind, call in (("rpc-up-data", wire.UP_DATA, 8), ("rpc-down-data", wire.DOWN_DATA, 9)):
        msg = wire.decode(DOC_HEX[name])
        assert (msg.kind, msg.id, msg.data) == (kind, call, PIECE)
        assert wire.encode([kind, call, msg.data]) == DOC_HEX[name]  # the hand-built header is plain CBOR

    msg = wire.decode(DOC_HEX["rpc-up-end"])
    assert (msg.kind, msg.id) == (wire.UP_END, 8)


def test_the_documented_peer_id_is_multibase_base32_of_the_multicodec_key() -> None:
    text, raw = DOC_TEXT["peer-id"], DOC_HEX["peer-id-bytes"]
    assert text[0] == "b"
    body = text[1:].upper()
    assert base64.b32decode(body + "=" * (-len(body) % 8)) == raw
    assert parse_peer_id(text) == raw[2:] == PEER_KEY
    assert peer_id_text(raw[2:]) == text


if __name__ == "__main__":
    print(render())
