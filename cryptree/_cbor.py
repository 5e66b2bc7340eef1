"""Strict CBOR for authenticated-but-untrusted plaintext.

Decrypting proves who wrote a blob, not that they followed the format: a
folder shared by someone else, or a buggy client, can seal anything. So the
decoder here refuses every semantic tag (dates, bignums, sets, shared
references that could build cycles...), indefinite lengths, duplicate map
keys and deep nesting, and the `expect_*` helpers check each field's exact
type so schema errors surface as FormatError, never KeyError/TypeError.
"""

from __future__ import annotations

import io
from typing import Any, NoReturn

import cbor2

from cryptree.errors import FormatError

_MAX_DEPTH = 16


def _reject_tag(decoder: Any, tag: Any = None) -> NoReturn:
    raise cbor2.CBORDecodeError("CBOR tags are not allowed")


# cbor2 decodes its built-in tags before consulting tag_hook, so each one is
# overridden explicitly; tag_hook catches the rest.
_NO_SEMANTICS = {tag: _reject_tag for tag in [*range(0, 300), 1004, 55799]}


def dumps(obj: Any) -> bytes:
    """Encode `obj` canonically (deterministic bytes for the same value)."""
    return cbor2.dumps(obj, canonical=True)


def loads(data: bytes | memoryview, what: str) -> Any:
    """Decode exactly one CBOR item with no tags; raise FormatError naming `what` on anything odd."""
    data = bytes(data)
    # An in-memory stream (not I/O) shows where the item ended: trailing
    # bytes would let a writer smuggle data past the schema.
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            tag_hook=_reject_tag,
            semantic_decoders=_NO_SEMANTICS,
            max_depth=_MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise FormatError(f"{what} is not valid CBOR ({type(exc).__name__}); it is corrupt") from None
    if stream.tell() != len(data):
        raise FormatError(f"{what} has {len(data) - stream.tell()} bytes after its CBOR item; it is corrupt")
    return value


def expect_list(value: Any, length: int | None, what: str) -> list[Any]:
    """`value` as a list (of exactly `length` items if given), else FormatError."""
    if type(value) is not list:
        raise FormatError(f"{what} must be a list; it is corrupt")
    if length is not None and len(value) != length:
        raise FormatError(f"{what} must have {length} fields, not {len(value)}; it is corrupt")
    return value


def expect_int(value: Any, lo: int, hi: int, what: str) -> int:
    """`value` as an int in [lo, hi] (bools refused), else FormatError."""
    if type(value) is not int or not lo <= value <= hi:
        raise FormatError(f"{what} must be an integer in [{lo}, {hi}]; it is corrupt")
    return value


def expect_bytes(value: Any, what: str, size: int | None = None, max_size: int | None = None) -> bytes:
    """`value` as bytes (of exactly `size`, or at most `max_size` bytes), else FormatError."""
    if type(value) is not bytes:
        raise FormatError(f"{what} must be a byte string; it is corrupt")
    if size is not None and len(value) != size:
        raise FormatError(f"{what} must be {size} bytes, not {len(value)}; it is corrupt")
    if max_size is not None and len(value) > max_size:
        raise FormatError(f"{what} exceeds {max_size} bytes; it is corrupt")
    return value


def expect_str(value: Any, what: str) -> str:
    """`value` as a text string, else FormatError."""
    if type(value) is not str:
        raise FormatError(f"{what} must be a text string; it is corrupt")
    return value


def expect_bool(value: Any, what: str) -> bool:
    """`value` as a bool, else FormatError."""
    if type(value) is not bool:
        raise FormatError(f"{what} must be true or false; it is corrupt")
    return value
