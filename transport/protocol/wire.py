"""CBOR message format of the RPC layer, and its strict decoder.

Every message is a CBOR array whose first element says what it is:

    [0, id, method, args]   request (args: map with text keys)
    [1, id, result]         success response
    [2, id, code, message]  error response
    [3, id, data]           piece of an upload, requester -> responder
    [4, id]                 end of an upload
    [5, id, data]           piece of a download, responder -> requester

Ids belong to the requester; kinds 3/4 travel towards the responder and kind
5 towards the requester, so both ends may issue requests on one connection
without their id spaces colliding.

The decoder is the first code that touches bytes from a stranger: it
accepts only plain CBOR data (ints, byte and text strings, arrays, maps with
text keys, bools, null, floats), bounded in depth and size, with no shared
references, and turns everything else into ProtocolError. Tags that cbor2
resolves itself (datetimes, sets, shared references…) decode to values that
this check refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import Any

import cbor2

from transport.errors import ProtocolError
from transport.protocol.limits import MESSAGE_MAX

REQUEST, RESULT, ERROR, UP_DATA, UP_END, DOWN_DATA = range(6)
MAX_DEPTH = 16
MAX_ID = 2**63 - 1
MAX_NAME = 64
MAX_ERROR_TEXT = 1024

Map = dict[str, Any]  # a CBOR map with text keys: a request's arguments, and most answers


@dataclass(frozen=True)
class Message:
    """One decoded, validated message."""

    kind: int
    id: int
    method: str = ""
    args: Any = None  # request args / result value
    data: bytes | memoryview = b""  # stream piece (a view into the received frame on the fast path)
    code: str = ""
    text: str = ""


def _reject_tag(decoder: Any, tag: Any) -> Any:
    raise ProtocolError(f"CBOR tag {tag.tag} is not allowed")


def _check_plain(value: Any, depth: int = 0, seen: set[int] | None = None) -> None:
    """Only plain data may cross the wire.

    cbor2 resolves shared-reference tags (28/29) itself, without calling the
    tag hook, so a few hundred bytes can describe a structure that is
    exponentially large to walk. Every container must therefore appear once:
    a second sighting (shared or cyclic reference) is refused, keeping this
    walk linear in the message size.
    """
    if depth > MAX_DEPTH:
        raise ProtocolError("message nests too deeply")
    if value is None or isinstance(value, (bool, int, float, bytes, str)):
        return
    if isinstance(value, (list, dict)):
        seen = set() if seen is None else seen
        if id(value) in seen:
            raise ProtocolError("shared references are not allowed")
        seen.add(id(value))
        if isinstance(value, list):
            for item in value:
                _check_plain(item, depth + 1, seen)
            return
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError("map keys must be text")
            _check_plain(item, depth + 1, seen)
        return
    raise ProtocolError(f"value of type {type(value).__name__} is not allowed")


def encode(obj: list[Any]) -> bytes:
    """Encode one message (already shaped as above)."""
    return cbor2.dumps(obj)


def request(id: int, method: str, args: Map) -> bytes:
    """Encode a request."""
    return cbor2.dumps([REQUEST, id, method, args])


def result(id: int, value: Any) -> bytes:
    """Encode a success response."""
    return cbor2.dumps([RESULT, id, value])


def error(id: int, code: str, text: str) -> bytes:
    """Encode an error response."""
    return cbor2.dumps([ERROR, id, code[:MAX_NAME], text[:MAX_ERROR_TEXT]])


def decode(buf: bytes | bytearray | memoryview) -> Message:
    """Decode and validate one message; ProtocolError on anything else."""
    if len(buf) > MESSAGE_MAX:
        raise ProtocolError("message too large")
    try:
        with BytesIO(buf) as fp:
            obj = cbor2.CBORDecoder(fp, tag_hook=_reject_tag, str_errors="strict").decode()
            if fp.tell() != len(buf):
                raise ProtocolError(f"{len(buf) - fp.tell()} bytes after the CBOR message")
    except ProtocolError:
        raise
    except RecursionError as exc:
        raise ProtocolError("message nests too deeply") from exc
    except Exception as exc:  # cbor2 raises a variety of types on malformed input
        raise ProtocolError(f"malformed CBOR: {type(exc).__name__}") from exc
    if not isinstance(obj, list) or len(obj) < 2:
        raise ProtocolError("a message is an array [kind, id, ...]")
    kind, id_ = obj[0], obj[1]
    if type(kind) is not int or type(id_) is not int or not 0 <= id_ <= MAX_ID:
        raise ProtocolError("message kind and id must be small non-negative integers")
    shape = {REQUEST: 4, RESULT: 3, ERROR: 4, UP_DATA: 3, UP_END: 2, DOWN_DATA: 3}.get(kind)
    if shape is None:
        raise ProtocolError(f"unknown message kind {kind}")
    if len(obj) != shape:
        raise ProtocolError(f"message kind {kind} has {len(obj)} fields, expected {shape}")
    _check_plain(obj)
    if kind == REQUEST:
        method, args = obj[2], obj[3]
        if not isinstance(method, str) or not 0 < len(method) <= MAX_NAME:
            raise ProtocolError("method must be a short text")
        if not isinstance(args, dict):
            raise ProtocolError("request arguments must be a map")
        return Message(kind, id_, method=method, args=args)
    if kind == RESULT:
        return Message(kind, id_, args=obj[2])
    if kind == ERROR:
        code, text = obj[2], obj[3]
        if not isinstance(code, str) or not isinstance(text, str) or len(code) > MAX_NAME or len(text) > MAX_ERROR_TEXT:
            raise ProtocolError("error response must carry a short code and text")
        return Message(kind, id_, code=code, text=text)
    if kind in (UP_DATA, DOWN_DATA):
        if not isinstance(obj[2], bytes):
            raise ProtocolError("stream data must be a byte string")
        return Message(kind, id_, data=obj[2])
    return Message(kind, id_)
