"""Helpers for the tests that keep docs/FORMATS.md true: read its examples, write new ones.

docs/FORMATS.md holds named, fenced examples:

    ```hex dir-body            bytes: hex pairs, whitespace free; `#` starts a comment;
    84 02 ...   # array(4)     `00*4050` is 4050 bytes of 0x00; `@name` is the bytes of
    ```                        the example called `name`

    ```text cap-r``` / ```json home-config``` / ```sql journal-schema```   taken verbatim

The doc tests decode each documented example with the real decoders, check
the field values the doc states, encode again with the real encoders and
compare the bytes. Examples are made by that same code with fixed keys and a
fixed nonce source (`fixed_nonces`), so they are deterministic; each test
module prints its blocks afresh when run as a script.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import blake3

FORMATS_MD = Path(__file__).resolve().parent.parent / "docs" / "FORMATS.md"
_BLOCK = re.compile(r"^```(hex|text|json|sql) ([a-z0-9-]+)\n(.*?)^```[ \t]*$", re.M | re.S)
_REPEAT = re.compile(r"([0-9a-fA-F]{2})\*([0-9]+)")


def blocks(path: Path = FORMATS_MD) -> dict[str, tuple[str, str]]:
    """Every named example in the doc: name -> (kind, raw text). Names must be unique."""
    out: dict[str, tuple[str, str]] = {}
    for kind, name, body in _BLOCK.findall(path.read_text(encoding="utf-8")):
        assert name not in out, f"example {name!r} appears twice in {path.name}"
        out[name] = (kind, body)
    return out


def _hex(text: str, raw: dict[str, tuple[str, str]], seen: tuple[str, ...]) -> bytes:
    out = bytearray()
    for line in text.splitlines():
        for token in line.split("#", 1)[0].split():
            if token.startswith("@"):
                name = token[1:]
                assert name not in seen, f"example {name!r} includes itself"
                out += _hex(raw[name][1], raw, (*seen, name))
            elif m := _REPEAT.fullmatch(token):
                out += bytes.fromhex(m.group(1)) * int(m.group(2))
            else:
                out += bytes.fromhex(token)
    return bytes(out)


def hex_examples(path: Path = FORMATS_MD) -> dict[str, bytes]:
    """The bytes of every ```hex example (comments dropped, repeats and @includes expanded)."""
    raw = blocks(path)
    return {name: _hex(body, raw, (name,)) for name, (kind, body) in raw.items() if kind == "hex"}


def text_examples(path: Path = FORMATS_MD) -> dict[str, str]:
    """The text of every ```text / ```json / ```sql example, without its final newline."""
    return {name: body.rstrip("\n") for name, (kind, body) in blocks(path).items() if kind != "hex"}


# ---- deterministic randomness ------------------------------------------------------------------


def nonce_bytes(n: int, label: bytes = b"") -> bytes:
    """The `n` bytes `fixed_nonces` hands out: BLAKE3 of a label, so examples look random but never change."""
    return blake3.blake3(b"pluto formats doc " + label).digest(length=n)


@contextlib.contextmanager
def fixed_nonces(*modules: Any, label: bytes = b"") -> Iterator[None]:
    """Within the block, `os.urandom(n)` in each of `modules` returns `nonce_bytes(n, label)`.

    Only the module's reference to `os` is replaced, never `os.urandom` itself.
    """
    fake = SimpleNamespace(urandom=lambda n: nonce_bytes(n, label))
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "os", fake))
        yield


# ---- writing examples ---------------------------------------------------------------------------

_WIDTH = 52  # hex column width before comments


def _line(depth: int, data: bytes, comment: str) -> str:
    text = "  " * depth + data.hex(" ")
    return f"{text:<{_WIDTH}}  # {comment}" if comment else text


def _wrapped(depth: int, data: bytes, comment: str, per_line: int = 16) -> list[str]:
    if not data:
        return []
    lines = [_line(depth, data[:per_line], comment)]
    lines += [_line(depth, data[i : i + per_line], "") for i in range(per_line, len(data), per_line)]
    return lines


def annotate_fields(fields: list[tuple[bytes, str]]) -> str:
    """A fixed layout, one field per line (long fields wrapped), each with its comment."""
    out: list[str] = []
    for data, comment in fields:
        out += _wrapped(0, data, comment)
    return "\n".join(out)


def annotate_include(name: str, comment: str) -> str:
    """A line standing for the bytes of the example called `name`."""
    return f"{'@' + name:<{_WIDTH}}  # {comment}"


def annotate_repeat(byte: int, count: int, comment: str) -> str:
    """A line standing for `count` bytes of value `byte`."""
    return f"{f'{byte:02x}*{count}':<{_WIDTH}}  # {comment}"


def annotate_cbor(data: bytes, names: dict[str, str] | None = None) -> str:
    """CBOR, one item per line: the head bytes, what they say, and for strings their bytes.

    Only what pluto writes: unsigned and negative ints, byte and text strings,
    arrays, maps, false/true/null. `names` maps a path like "2.0.10" (indices
    from the top item) to a label put in front of the comment.
    """
    out: list[str] = []
    names = names or {}

    def head(pos: int) -> tuple[int, int, int]:
        b = data[pos]
        major, info = b >> 5, b & 31
        if info < 24:
            return major, info, pos + 1
        width = {24: 1, 25: 2, 26: 4, 27: 8}[info]
        return major, int.from_bytes(data[pos + 1 : pos + 1 + width], "big"), pos + 1 + width

    def item(pos: int, depth: int, path: str) -> int:
        major, arg, end = head(pos)
        label = names.get(path, "")
        label = f"{label}: " if label else ""
        hd = data[pos:end]
        if major == 0:
            out.append(_line(depth, hd, f"{label}{arg}"))
            return end
        if major == 1:
            out.append(_line(depth, hd, f"{label}{-1 - arg}"))
            return end
        if major in (2, 3):
            body = data[end : end + arg]
            if major == 3:
                out.append(_line(depth, hd, f"{label}text({arg}) {body.decode()!r}"))
                out.extend(_wrapped(depth + 1, body, ""))
            elif arg <= 16:
                out.append(_line(depth, hd + body, f"{label}bytes({arg})"))
            else:
                out.append(_line(depth, hd, f"{label}bytes({arg})"))
                out.extend(_wrapped(depth + 1, body, ""))
            return end + arg
        if major == 4:
            out.append(_line(depth, hd, f"{label}array({arg})"))
            for i in range(arg):
                end = item(end, depth + 1, f"{path}.{i}" if path else str(i))
            return end
        if major == 5:
            out.append(_line(depth, hd, f"{label}map({arg})"))
            for i in range(arg):
                key_major, key_len, key_end = head(end)
                key = data[key_end : key_end + key_len].decode() if key_major == 3 else str(i)
                end = item(end, depth + 1, f"{path}.{key}#key" if path else f"{key}#key")
                end = item(end, depth + 2, f"{path}.{key}" if path else key)
            return end
        if major == 7 and arg in (20, 21, 22):
            out.append(_line(depth, hd, label + {20: "false", 21: "true", 22: "null"}[arg]))
            return end
        raise ValueError(f"annotate_cbor: unsupported CBOR item {hd.hex()} at {pos}")

    end = item(0, 0, "")
    assert end == len(data), "annotate_cbor: bytes after the item"
    return "\n".join(out)


def block(kind: str, name: str, body: str) -> str:
    """A fenced example as the doc holds it."""
    return f"```{kind} {name}\n{body}\n```"


Built = dict[str, tuple[str, Any, str]]  # example name -> (block kind, value, what the block shows)


def render_blocks(built: Built) -> str:
    """Examples as the doc holds them (what a doc-test module prints when run as a script)."""
    return "\n\n".join(block(kind, name, shown) for name, (kind, _, shown) in built.items())


def differing_examples(built: Built, path: Path = FORMATS_MD) -> list[str]:
    """Names of the examples whose bytes or text in the doc differ from what the code made."""
    doc_hex, doc_text = hex_examples(path), text_examples(path)
    return [name for name, (kind, value, _) in built.items()
            if (doc_hex.get(name) if kind == "hex" else doc_text.get(name)) != value]
