"""The strict decoder refuses anything after the one CBOR item of a message."""

from __future__ import annotations

import cbor2
import pytest

from transport.errors import ProtocolError
from transport.protocol import wire


def test_trailing_bytes_after_the_cbor_item_are_refused() -> None:
    good = wire.request(1, "ping", {})
    assert wire.decode(good).method == "ping"
    for tail in (b"\x00", b"\xf6", cbor2.dumps([1, 2]), bytes(1000)):
        with pytest.raises(ProtocolError, match="after the CBOR"):
            wire.decode(good + tail)
    with pytest.raises(ProtocolError):
        wire.decode(wire.result(3, "ok") + b"\x01")
