"""Validation of request arguments: every field a stranger sends is checked.

Each helper returns the value or raises RemoteError("bad_request", ...), so a
malformed request is answered with a clear refusal and changes nothing.
"""

from __future__ import annotations

from typing import Any

from transport.errors import RemoteError
from transport.protocol.wire import Map


def _bad(msg: str) -> RemoteError:
    return RemoteError("bad_request", msg)


def get_bytes(args: Map, name: str, *, size: int | None = None, max_size: int | None = None) -> bytes:
    """A byte-string argument, optionally of an exact or bounded size."""
    value = args.get(name)
    if not isinstance(value, bytes):
        raise _bad(f"argument {name!r} must be bytes")
    if size is not None and len(value) != size:
        raise _bad(f"argument {name!r} must be {size} bytes")
    if max_size is not None and len(value) > max_size:
        raise _bad(f"argument {name!r} exceeds {max_size} bytes")
    return value


def get_int(args: Map, name: str, *, low: int = 0, high: int = 2**63 - 1, default: int | None = None) -> int:
    """An integer argument within [low, high]."""
    value: Any = args.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"argument {name!r} must be an integer from {low} to {high}")
    return value


def get_str(args: Map, name: str, *, max_len: int = 256, default: str | None = None) -> str:
    """A text argument of bounded length."""
    value = args.get(name, default)
    if not isinstance(value, str) or len(value) > max_len:
        raise _bad(f"argument {name!r} must be text of at most {max_len} characters")
    return value


def get_bool(args: Map, name: str, *, default: bool | None = None) -> bool:
    """A boolean argument."""
    value = args.get(name, default)
    if not isinstance(value, bool):
        raise _bad(f"argument {name!r} must be true or false")
    return value


def get_list(args: Map, name: str, *, max_len: int, default: list[Any] | None = None) -> list[Any]:
    """A list argument of bounded length (items are checked by the caller)."""
    value = args.get(name, default)
    if not isinstance(value, list) or len(value) > max_len:
        raise _bad(f"argument {name!r} must be a list of at most {max_len} items")
    return value
