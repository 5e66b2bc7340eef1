"""Directories: an encrypted, signed list of entries in the directory's own slot.

Cryptree links (Grolimund et al.; Peergos, Tahoe): a child directory's entry
carries the child's *read* capability in the clear (inside the parent's
encrypted content), so read access to a folder is read access to its whole
subtree and to nothing above it. The child's *writer seed* is additionally
sealed under a key derived from the parent's writer seed, so someone holding
only the parent's read capability cannot write anywhere below it.

Plaintext (canonical CBOR, then padded, encrypted and signed by _slotbox):

    [2, self_attrs or null, [entry, ...], [tombstone, ...]]   both sorted by UTF-8 name
    entry      = [name, kind, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, size, {xattr: value}, child, version]
    kind       = 0 file | 1 dir | 2 symlink
    child      = file: [0, data] | [1, file_key, sealed_manifest]
                 dir:  [writer_public_key, read_key, wrapped_writer_seed or null]
                 symlink: target bytes
    tombstone  = [name, deleted_ns, version]      a name deleted recently (see cryptree/dirmerge.py)
    version    = [[writer_tag, counter], ...]     a version vector (cryptree/versions.py)
    self_attrs = [mode, uid, gid, atime_ns, mtime_ns, ctime_ns, {xattr: value}]

Format 1 (`[1, self_attrs, [entry of 11 fields, ...]]`, no versions, no
tombstones) is still read: its entries have the empty version.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptree import _cbor, versions
from cryptree._slotbox import open_from_slot, seal_into_slot
from cryptree.caps import ReadCap, WriteCap, new_write_cap
from cryptree.errors import CapabilityError, FormatError
from cryptree.filenode import (
    MAX_FILE_SIZE,
    FileContent,
    FileRef,
    InlineData,
    decode_content,
    encode_content,
)
from cryptree.keys import AEAD_OVERHEAD, KEY_SIZE, aead_open, aead_seal, derive_subkey
from cryptree.slot import SignedSlot
from cryptree.versions import EMPTY, Version

DIR_FORMAT = 2
MAX_NAME_BYTES = 255
MAX_SYMLINK_TARGET = 4095  # PATH_MAX - 1
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 * 1024  # Linux XATTR_SIZE_MAX
MAX_XATTRS_TOTAL = 256 * 1024
MAX_MODE = 0o7777
MAX_ID = 2**32 - 1
MIN_TIME, MAX_TIME = -(2**63), 2**63 - 1

_DIR_DOMAIN = b"pluto/v1/dir"
_CHILD_WRAP_LABEL = b"pluto/v1/dir/child-writer-wrap"
_CHILD_WRAP_AAD = b"pluto/v1/dir/child-writer"
_WRAPPED_SIZE = KEY_SIZE + AEAD_OVERHEAD

EntryKind = Literal["file", "dir", "symlink"]
_KIND_CODE: dict[str, int] = {"file": 0, "dir": 1, "symlink": 2}


def new_directory_cap() -> WriteCap:
    """Fresh random keys for a new directory (unlinkable to its parent by anyone but readers of the parent)."""
    return new_write_cap("dir")


def validate_name(name: object) -> str:
    """Return `name` if it is a legal entry name, else raise FormatError saying why.

    Any Unicode (newlines included) except "/" and NUL, not "." or "..", and
    at most 255 bytes in UTF-8. No normalisation: names are compared exactly,
    as POSIX does. Lone surrogates (undecodable bytes from os.fsdecode) are
    refused: the FUSE layer must reject non-UTF-8 names.
    """
    if type(name) is not str:
        raise FormatError("entry name must be text")
    if not name:
        raise FormatError("entry name is empty; give it a name")
    if name in (".", ".."):
        raise FormatError(f"entry name {name!r} is reserved; choose another name")
    if "/" in name or "\0" in name:
        raise FormatError(f"entry name {name!r} contains '/' or NUL; remove it")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise FormatError(f"entry name {name!r} is not valid Unicode; rename it with valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise FormatError(f"entry name is {size} bytes in UTF-8; it must be at most {MAX_NAME_BYTES}")
    return name


def _check_xattrs(xattrs: Any, what: str) -> Mapping[str, bytes]:
    if not isinstance(xattrs, Mapping):
        raise FormatError(f"{what} extended attributes must be a mapping of name to bytes")
    total = 0
    for key, value in xattrs.items():
        if type(key) is not str or not key or "\0" in key:
            raise FormatError(f"{what} has an extended attribute with an empty, NUL-containing or non-text name")
        try:
            key_size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise FormatError(f"{what} has an extended attribute name that is not valid Unicode") from None
        if key_size > MAX_XATTR_NAME:
            raise FormatError(f"{what} has an extended attribute name over {MAX_XATTR_NAME} bytes")
        if type(value) is not bytes or len(value) > MAX_XATTR_VALUE:
            raise FormatError(f"{what} extended attribute {key!r} must be bytes of at most {MAX_XATTR_VALUE}")
        total += key_size + len(value)
    if total > MAX_XATTRS_TOTAL:
        raise FormatError(f"{what} has {total} bytes of extended attributes, over {MAX_XATTRS_TOTAL}")
    return types.MappingProxyType(dict(xattrs))


def _check_attrs(mode: Any, uid: Any, gid: Any, times: Iterable[Any], what: str) -> None:
    _cbor.expect_int(mode, 0, MAX_MODE, f"{what} mode")
    _cbor.expect_int(uid, 0, MAX_ID, f"{what} uid")
    _cbor.expect_int(gid, 0, MAX_ID, f"{what} gid")
    for t in times:
        _cbor.expect_int(t, MIN_TIME, MAX_TIME, f"{what} timestamp")


@dataclass(frozen=True)
class DirLink:
    """The link to a child directory: its read cap, and (for writers) its writer seed sealed for the parent."""

    cap: ReadCap
    wrapped_writer: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if type(self.cap) is not ReadCap or self.cap.kind != "dir":
            raise FormatError("a directory link must hold the child's directory read capability")
        if self.wrapped_writer is not None:
            _cbor.expect_bytes(self.wrapped_writer, "wrapped child writer seed", size=_WRAPPED_SIZE)


@dataclass(frozen=True)
class Symlink:
    """A symbolic link's target, as raw bytes (what readlink returns)."""

    target: bytes

    def __post_init__(self) -> None:
        _cbor.expect_bytes(self.target, "symlink target", max_size=MAX_SYMLINK_TARGET)
        if not self.target or b"\0" in self.target:
            raise FormatError("symlink target must be 1 to 4095 bytes without NUL")


Child = FileContent | DirLink | Symlink


@dataclass(frozen=True)
class DirEntry:
    """One name in a directory. Times are integer nanoseconds since the epoch."""

    name: str
    child: Child
    mode: int = 0o644  # permission bits only (0..0o7777); the kind says file/dir/symlink
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    version: Version = EMPTY  # which writers changed this name, and how often (merging several writers)

    def __post_init__(self) -> None:
        validate_name(self.name)
        what = f"entry {self.name!r}"
        if self.version:
            versions.check(self.version, what)
        if type(self.child) not in (InlineData, FileRef, DirLink, Symlink):
            raise FormatError(f"{what} child must be InlineData, FileRef, DirLink or Symlink")
        _check_attrs(self.mode, self.uid, self.gid, (self.atime_ns, self.mtime_ns, self.ctime_ns), what)
        _cbor.expect_int(self.size, 0, MAX_FILE_SIZE, f"{what} size")
        # Where the size is knowable from the child, a mismatch is corruption.
        if type(self.child) is InlineData and len(self.child.data) != self.size:
            raise FormatError(f"{what} holds {len(self.child.data)} inline bytes but its size says {self.size}")
        if type(self.child) is Symlink and len(self.child.target) != self.size:
            raise FormatError(f"{what} symlink target is {len(self.child.target)} bytes but its size says {self.size}")
        object.__setattr__(self, "xattrs", _check_xattrs(self.xattrs, what))

    @property
    def kind(self) -> EntryKind:
        """"file", "dir" or "symlink", from the child."""
        if type(self.child) is DirLink:
            return "dir"
        if type(self.child) is Symlink:
            return "symlink"
        return "file"


@dataclass(frozen=True)
class Tombstone:
    """A name deleted at `deleted_ns`, kept for a while so a merge knows it was deleted, not never seen."""

    name: str
    deleted_ns: int
    version: Version

    def __post_init__(self) -> None:
        validate_name(self.name)
        _cbor.expect_int(self.deleted_ns, MIN_TIME, MAX_TIME, f"tombstone {self.name!r} time")
        if not self.version:
            raise FormatError(f"tombstone {self.name!r} has no version; it is corrupt")
        versions.check(self.version, f"tombstone {self.name!r}")


@dataclass(frozen=True)
class DirAttrs:
    """A directory's own attributes, kept in its own slot.

    They change with every change inside the directory (mtime/ctime), and
    keeping them here rather than only in the parent's entry means a write
    deep in the tree re-signs one slot, not every ancestor up to the root.
    When present they win over the copy in the parent's entry.
    """

    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_attrs(self.mode, self.uid, self.gid, (self.atime_ns, self.mtime_ns, self.ctime_ns), "directory")
        object.__setattr__(self, "xattrs", _check_xattrs(self.xattrs, "directory"))


@dataclass(frozen=True)
class Directory:
    """An opened directory: the verified sequence number, its own attributes, its entries and its
    tombstones, each in name order."""

    seq: int
    attrs: DirAttrs | None
    entries: tuple[DirEntry, ...]
    tombstones: tuple[Tombstone, ...] = ()

    def get(self, name: str) -> DirEntry | None:
        """The entry called `name`, or None."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None

    def by_name(self) -> dict[str, DirEntry]:
        """All entries keyed by name (build once, look up many)."""
        return {e.name: e for e in self.entries}


# ---- parent -> child write links ------------------------------------------------------------


def _wrap_key(parent: WriteCap) -> bytes:
    return derive_subkey(parent.writer_seed, _CHILD_WRAP_LABEL)


def link_child(parent: WriteCap, child: WriteCap | ReadCap) -> DirLink:
    """The link to put in `parent`'s entry for directory `child`.

    Given the child's write cap, the link lets holders of the parent's write
    cap recover it; given only a read cap (e.g. a folder someone shared
    read-only), the link is read-only.
    """
    if not isinstance(parent, WriteCap) or parent.kind != "dir":
        raise CapabilityError("linking a child directory needs the parent directory's write capability")
    if child.kind != "dir":
        raise CapabilityError("only directories are linked with DirLink; files go in as InlineData or FileRef")
    if isinstance(child, ReadCap):
        return DirLink(child)
    wrapped = aead_seal(_wrap_key(parent), child.writer_seed, _CHILD_WRAP_AAD + child.writer)
    return DirLink(child.read_cap(), wrapped)


def child_write_cap(parent: WriteCap, entry: DirEntry) -> WriteCap:
    """Recover a child directory's write cap from its entry, using the parent's write cap.

    Impossible with a read cap: the wrapping key derives from the parent's
    writer seed, which a read cap does not contain.
    """
    if isinstance(parent, ReadCap):
        raise CapabilityError(
            "a read capability cannot recover a child's write capability; use the parent's write capability"
        )
    if not isinstance(parent, WriteCap) or parent.kind != "dir":
        raise CapabilityError("recovering a child's write capability needs the parent directory's write capability")
    if not isinstance(entry, DirEntry) or type(entry.child) is not DirLink:
        raise CapabilityError("only a directory entry has a child write capability")
    link = entry.child
    if link.wrapped_writer is None:
        raise CapabilityError(f"directory {entry.name!r} is linked read-only; its write capability is not here")
    seed = aead_open(_wrap_key(parent), link.wrapped_writer, _CHILD_WRAP_AAD + link.cap.writer, "child writer seed")
    cap = WriteCap("dir", seed, link.cap.read_key)
    if cap.writer != link.cap.writer:
        # Only possible if the parent's writer sealed a wrong seed: refuse
        # rather than sign a slot nobody will accept.
        raise FormatError(f"directory {entry.name!r} has a writer seed that does not match its capability")
    return cap


# ---- encoding --------------------------------------------------------------------------------


def _encode_child(child: Child) -> Any:
    # DirEntry admits exactly these four types, so isinstance (which narrows) is as strict as `type() is`.
    if isinstance(child, DirLink):
        return [child.cap.writer, child.cap.read_key, child.wrapped_writer]
    if isinstance(child, Symlink):
        return child.target
    return encode_content(child)


def _decode_child(kind: int, value: Any) -> Child:
    if kind == 1:
        writer, read_key, wrapped = _cbor.expect_list(value, 3, "directory link")
        cap = ReadCap(
            "dir",
            _cbor.expect_bytes(writer, "child writer key", size=KEY_SIZE),
            _cbor.expect_bytes(read_key, "child read key", size=KEY_SIZE),
        )
        if wrapped is not None:
            _cbor.expect_bytes(wrapped, "wrapped child writer seed", size=_WRAPPED_SIZE)
        return DirLink(cap, wrapped)
    if kind == 2:
        return Symlink(_cbor.expect_bytes(value, "symlink target", max_size=MAX_SYMLINK_TARGET))
    return decode_content(value)


def _encode_entry(e: DirEntry) -> list[Any]:
    return [
        e.name, _KIND_CODE[e.kind], e.mode, e.uid, e.gid,
        e.atime_ns, e.mtime_ns, e.ctime_ns, e.size, dict(e.xattrs), _encode_child(e.child),
        versions.encode(e.version),
    ]  # fmt: skip


def _decode_entry(value: Any, fields: int = 12) -> DirEntry:
    row = _cbor.expect_list(value, fields, "entry")
    name, kind, mode, uid, gid, atime, mtime, ctime, size, xattrs, child = row[:11]
    name = validate_name(_cbor.expect_str(name, "entry name"))
    kind = _cbor.expect_int(kind, 0, 2, f"entry {name!r} kind")
    if type(xattrs) is not dict:
        raise FormatError(f"entry {name!r} extended attributes must be a map; it is corrupt")
    version = versions.decode(row[11], f"entry {name!r}") if fields > 11 else EMPTY
    return DirEntry(name, _decode_child(kind, child), mode, uid, gid, atime, mtime, ctime, size, xattrs, version)


def encode_entry(entry: DirEntry) -> bytes:
    """One entry on its own, as the directory format writes it (for local journals)."""
    if type(entry) is not DirEntry:
        raise FormatError("an entry must be a DirEntry")
    return _cbor.dumps(_encode_entry(entry))


def decode_entry(data: bytes) -> DirEntry:
    """Parse `encode_entry` output strictly; FormatError on anything else."""
    return _decode_entry(_cbor.loads(data, "directory entry"))


def _encode_tombstone(t: Tombstone) -> list[Any]:
    return [t.name, t.deleted_ns, versions.encode(t.version)]


def _decode_tombstone(value: Any) -> Tombstone:
    name, deleted, version = _cbor.expect_list(value, 3, "tombstone")
    name = validate_name(_cbor.expect_str(name, "tombstone name"))
    return Tombstone(name, _cbor.expect_int(deleted, MIN_TIME, MAX_TIME, f"tombstone {name!r} time"),
                     versions.decode(version, f"tombstone {name!r}"))


def _encode_attrs(a: DirAttrs | None) -> Any:
    if a is None:
        return None
    return [a.mode, a.uid, a.gid, a.atime_ns, a.mtime_ns, a.ctime_ns, dict(a.xattrs)]


def _decode_attrs(value: Any) -> DirAttrs | None:
    if value is None:
        return None
    mode, uid, gid, atime, mtime, ctime, xattrs = _cbor.expect_list(value, 7, "directory attributes")
    if type(xattrs) is not dict:
        raise FormatError("directory extended attributes must be a map; it is corrupt")
    return DirAttrs(mode, uid, gid, atime, mtime, ctime, xattrs)


def _sorted_unique(items: Iterable[Any], what: str = "entries") -> tuple[Any, ...]:
    ordered = sorted(items, key=lambda e: e.name.encode("utf-8"))
    for a, b in itertools.pairwise(ordered):
        if a.name == b.name:
            raise FormatError(f"directory has two {what} named {a.name!r}; names must be unique")
    return tuple(ordered)


def _check_disjoint(entries: tuple[DirEntry, ...], tombstones: tuple[Tombstone, ...]) -> None:
    if tombstones and {e.name for e in entries} & {t.name for t in tombstones}:
        raise FormatError("directory names a file and a tombstone alike; it is corrupt")


def encode_directory(entries: Iterable[DirEntry], attrs: DirAttrs | None = None,
                     tombstones: Iterable[Tombstone] = ()) -> bytes:
    """Canonical CBOR plaintext of a directory (entries and tombstones sorted by UTF-8 name)."""
    entries = list(entries)
    tombstones = list(tombstones)
    if not all(type(e) is DirEntry for e in entries):
        raise FormatError("directory entries must be DirEntry objects")
    if not all(type(t) is Tombstone for t in tombstones):
        raise FormatError("directory tombstones must be Tombstone objects")
    if attrs is not None and type(attrs) is not DirAttrs:
        raise FormatError("directory attributes must be a DirAttrs or None")
    ordered = _sorted_unique(entries)
    dead = _sorted_unique(tombstones, "tombstones")
    _check_disjoint(ordered, dead)
    return _cbor.dumps([DIR_FORMAT, _encode_attrs(attrs), [_encode_entry(e) for e in ordered],
                        [_encode_tombstone(t) for t in dead]])


def decode_directory(seq: int, body: bytes | memoryview) -> Directory:
    """Parse directory plaintext strictly (format 2, or format 1 from older plutos).

    FormatError on anything malformed.
    """
    fields = _cbor.loads(body, "directory")
    head = _cbor.expect_list(fields, None, "directory")
    version = head[0] if head else None
    if type(version) is not int or version not in (1, DIR_FORMAT):
        raise FormatError(f"directory format {version!r} is not known to this pluto; upgrade pluto")
    if version == 1:
        _, attrs, rows = _cbor.expect_list(head, 3, "directory")
        dead_rows: list[Any] = []
    else:
        _, attrs, rows, dead_rows = _cbor.expect_list(head, 4, "directory")
        dead_rows = _cbor.expect_list(dead_rows, None, "directory tombstone list")
    rows = _cbor.expect_list(rows, None, "directory entry list")
    entries = _sorted_unique([_decode_entry(row, 11 if version == 1 else 12) for row in rows])
    tombstones = _sorted_unique([_decode_tombstone(row) for row in dead_rows], "tombstones")
    _check_disjoint(entries, tombstones)
    return Directory(seq, _decode_attrs(attrs), entries, tombstones)


def seal_directory(
    write_cap: WriteCap, seq: int, entries: Iterable[DirEntry], attrs: DirAttrs | None = None,
    tombstones: Iterable[Tombstone] = (),
) -> SignedSlot:
    """Encode, pad, encrypt and sign a directory as version `seq` of its slot.

    `seq` must exceed the version peers hold (they refuse others); the
    volume engine owns that counter.
    """
    body = encode_directory(entries, attrs, tombstones)
    return seal_into_slot(write_cap, seq, body, _DIR_DOMAIN, "dir", "directory")


def open_directory(cap: ReadCap | WriteCap, slot: SignedSlot) -> Directory:
    """Verify a directory slot against `cap` (signature and writer), decrypt and validate it.

    Raises SignatureError (bad signature, other writer), DecryptionError
    (wrong read key, tampered ciphertext), FormatError (malformed content) or
    CapabilityError (not a directory cap); never anything else on bad input.
    """
    body = open_from_slot(cap, slot, _DIR_DOMAIN, "dir", "directory")
    return decode_directory(slot.seq, body)
