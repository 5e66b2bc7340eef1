"""The volume engine: files and folders of one user, on the network.

Write path: data → FastCDC chunks → sealed (keyed-BLAKE3 id, zstd if it
helps, AES-256-GCM, padded) → deduplicated against chunks this volume already
placed → batched into packs → packs uploaded in the background (erasure-coded,
placed, record signed). Metadata (directory slots) is published only after
every pack it points into is stored: `save_dir` flushes first, so a reader
never finds a manifest whose chunks are not on the network yet.

Read path: a file's manifest (inline in its directory entry, or indirect for
big files) → chunk locators → pack records → verified fragments from any k
peers → decoded segment → sealed chunk → verified and decrypted plaintext.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from cryptree.caps import ReadCap, WriteCap
from cryptree.chunks import ChunkerParams, StreamChunker, chunk_id, iter_chunks, seal_chunk
from cryptree.dirmerge import merge_all, merge_directories, versioned_update
from cryptree.dirnode import DirAttrs, Directory, DirEntry, Tombstone, open_directory, seal_directory
from cryptree.errors import CryptreeError
from cryptree.filenode import (
    INLINE_MAX,
    ChunkRef,
    FileContent,
    FileRef,
    InlineData,
    Manifest,
    decode_manifest,
    encode_manifest,
    new_file_key,
    open_chunk_ref,
)
from cryptree.identity import UserKeys
from cryptree.packrecord import NONCE_SIZE, Locator, pack_write_cap
from pluto_fs.errors import ConflictError, DamagedError, NotEnoughPeers, PlutoError
from pluto_fs.home import Home
from pluto_fs.net.network import Network
from pluto_fs.net.slot_replicas import SlotReplicas
from pluto_fs.store.fetch_cache import FetchCache
from pluto_fs.store.manifest_index import ManifestIndex
from pluto_fs.store.pack_io import PackStore
from pluto_fs.store.pack_log import PackLog
from pluto_fs.store.packs import DEFAULT_PACK_SIZE, PackBuilder
from transport.errors import TransportError
from transport.protocol.pool import open_pool

log = logging.getLogger(__name__)

MAX_MANIFEST_DEPTH = 3
PACK_UPLOADS_IN_FLIGHT = 2
READ_PIECE = 8 << 20  # bytes read from a local file per step when storing it
READ_AHEAD_BYTES = 6 << 20  # fetched ahead of a sequential reader
READ_AHEAD_TASKS = 4  # chunks fetched ahead at once
READ_AHEAD_FILES = 64  # files whose last read position is remembered
UPDATE_MERGES = 8  # times a read-modify-write of a folder merges a concurrent change and tries again


@dataclass
class Volume:
    """One user's tree. Create with `open_volume` (an async context manager)."""

    keys: UserKeys
    net: Network
    slots: SlotReplicas
    packs: PackStore
    _nursery: trio.Nursery
    writer_tag: bytes = b"\0" * 8  # this device's tag in folder entries' version vectors (Home.writer_tag)
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    pack_size: int = DEFAULT_PACK_SIZE
    _known: dict[bytes, ChunkRef] = field(default_factory=dict)  # chunk id -> placed (or in-flight) ref
    _builder: PackBuilder | None = None
    _nonce: bytes = b""
    # Packs shipped and not yet stored or failed, by shipping order, and what each one's
    # chunks are known as (so a failure can take them back out of dedup).
    _shipped: int = 0
    _in_flight: dict[int, trio.Event] = field(default_factory=dict)
    _builder_chunks: list[tuple[bytes, ChunkRef]] = field(default_factory=list)
    # Pack failures so far. A caller holding refs compares counts (see `upload_mark`)
    # instead of taking errors from a shared list: every flush that could hold a ref
    # into a failed pack must fail, not just whichever flush happened to look first.
    _failures: int = 0
    _last_failure: BaseException | None = None
    _upload_slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(PACK_UPLOADS_IN_FLIGHT))
    _chunks: FetchCache[bytes] = field(default_factory=lambda: FetchCache(64 << 20, len))
    _manifests: FetchCache[ManifestIndex] = field(default_factory=lambda: FetchCache(16 << 20, lambda m: m.cost))
    _read_ends: dict[bytes, int] = field(default_factory=dict)  # sealed manifest -> where the last read ended
    _prefetching: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.chunker = ChunkerParams(seed=self.keys.chunker_seed)

    # ---- chunks and packs -------------------------------------------------------

    async def add_chunk(self, plaintext: bytes | memoryview) -> ChunkRef:
        """Seal one chunk and queue it for upload (or reuse an identical one already placed)."""
        # The id alone (one keyed hash) decides dedup; sealing costs compression and
        # encryption on top, so only new chunks pay for it.
        known = self._known.get(chunk_id(self.keys.chunk_mac_key, plaintext))
        if known is not None:
            return known
        sealed = await trio.to_thread.run_sync(seal_chunk, self.keys.chunk_mac_key, plaintext)
        if self._builder is None or not self._builder.fits(len(sealed.sealed)):
            await self._ship_pack()
            self._builder = PackBuilder(self.pack_size)
            self._nonce = os.urandom(NONCE_SIZE)
        offset, length = self._builder.add(sealed.chunk_id, sealed.sealed)
        record = pack_write_cap(self.keys.pack_key, self._nonce).read_cap()
        ref = ChunkRef.from_sealed(sealed, Locator(self._nonce, record, offset, length).encode())
        self._known[sealed.chunk_id] = ref
        self._builder_chunks.append((sealed.chunk_id, ref))
        self.packs.stats.chunk_bytes_packed += length
        return ref

    async def _ship_pack(self) -> None:
        """Finish the current pack and start uploading it in the background."""
        if self._builder is None or self._builder.count == 0:
            return
        # Backpressure: at most N packs in flight. Wait *before* taking the pack out of the
        # builder: a caller cancelled here (an fsync that timed out) must leave the pack
        # where the next flush finds it, because dedup already hands out refs into it.
        await self._upload_slots.acquire()
        if self._builder is None or self._builder.count == 0:
            self._upload_slots.release()  # another task shipped it while we waited
            return
        pack, nonce = self._builder.finish(), self._nonce
        chunks, self._builder_chunks = self._builder_chunks, []
        self._builder = None
        self._shipped += 1
        done = self._in_flight[self._shipped] = trio.Event()
        self._nursery.start_soon(self._upload, self._shipped, done, nonce, pack.data, chunks)

    async def _upload(
        self, number: int, done: trio.Event, nonce: bytes, data: bytes, chunks: list[tuple[bytes, ChunkRef]]
    ) -> None:
        try:
            await self.packs.upload(nonce, data)
        except Exception as exc:
            # Nothing may escape into the volume's nursery: it would end the mount (a full local
            # disk, for one, makes the pack log raise sqlite3.OperationalError here). An unexpected error
            # counts as a failed pack, which is always safe: the data stays pending and the
            # caller's flush fails, so nothing publishes refs into this pack.
            if not isinstance(exc, (PlutoError, CryptreeError, TransportError, OSError, sqlite3.Error)):
                log.error("uploading a pack failed unexpectedly; it counts as failed and will be retried",
                          exc_info=exc)
            # Take the pack's chunks out of dedup *now*: a store that starts after this
            # point must seal them again instead of pointing into a pack that is not there.
            for cid, ref in chunks:
                if self._known.get(cid) is ref:
                    del self._known[cid]
            self._failures += 1
            self._last_failure = exc
        finally:
            self._upload_slots.release()
            del self._in_flight[number]
            done.set()

    def upload_mark(self) -> int:
        """A point in upload history: take it before storing, pass it to `flush(since=...)`.

        Refs that `store` hands out may point into packs still uploading (or
        deduplicated into another caller's pack); if any pack fails after the
        mark, the flush that follows fails too, so nothing publishes such refs.
        """
        return self._failures

    async def flush(self, since: int | None = None) -> None:
        """Upload everything queued and wait until it is stored.

        Raises the last upload failure if any pack failed after `since` (an
        `upload_mark`; default: when this flush started). Packs shipped
        after this flush began are not waited for.
        """
        mark = self._failures if since is None else since
        await self._ship_pack()
        last = self._shipped
        for number, done in sorted(self._in_flight.items()):
            if number <= last:
                await done.wait()
        if self._failures > mark:
            assert self._last_failure is not None
            raise self._last_failure

    # ---- files ------------------------------------------------------------------

    async def store(self, data: bytes | memoryview, previous: Manifest | None = None) -> FileContent:
        """Store file bytes; tiny files inline, others as sealed chunks in packs.

        `previous` (the file's old manifest) seeds deduplication, so an edit
        re-uploads only the chunks it changed even after a restart.
        """
        if previous is not None:
            for ref in previous.chunks:
                self._known.setdefault(ref.chunk_id, ref)
        if len(data) <= INLINE_MAX:
            return InlineData(bytes(data))
        refs = [await self.add_chunk(chunk) for _, chunk in iter_chunks(data, self.chunker)]
        return await self._file_ref(Manifest.of(refs))

    async def store_file(self, path: str | os.PathLike, previous: Manifest | None = None) -> tuple[FileContent, int]:
        """Store a local file's bytes, streamed in pieces (memory stays bounded for any size).

        Returns the content and the number of bytes stored.
        """
        if previous is not None:
            for ref in previous.chunks:
                self._known.setdefault(ref.chunk_id, ref)
        chunker = StreamChunker(self.chunker)
        refs: list[ChunkRef] = []
        size = 0
        head = b""
        async with await trio.open_file(path, "rb") as f:
            while True:
                piece = await f.read(READ_PIECE)
                if not piece:
                    break
                if size < INLINE_MAX + 1:
                    head += piece[: INLINE_MAX + 1]
                size += len(piece)
                for _, chunk in chunker.feed(piece):
                    refs.append(await self.add_chunk(chunk))
        if size <= INLINE_MAX:
            return InlineData(head[:size]), size
        for _, chunk in chunker.finish():
            refs.append(await self.add_chunk(chunk))
        return await self._file_ref(Manifest.of(refs)), size

    async def _file_ref(self, manifest: Manifest, depth: int = 0) -> FileRef:
        key = new_file_key()
        try:
            return FileRef.seal(key, manifest)
        except CryptreeError:
            if depth >= MAX_MANIFEST_DEPTH:
                raise PlutoError("file is too large for this pluto (manifest nesting exceeded)") from None
        inner = encode_manifest(manifest)
        refs = [await self.add_chunk(chunk) for _, chunk in iter_chunks(inner, self.chunker)]
        outer = Manifest(manifest.size, tuple(refs), indirect=True)
        return await self._file_ref(outer, depth + 1)

    async def manifest(self, content: FileRef, size: int | None = None) -> Manifest:
        """The direct manifest of a file (indirect levels resolved)."""
        return (await self._index(content, size)).manifest

    async def _index(self, content: FileRef, size: int | None) -> ManifestIndex:
        # Cached per sealed manifest (unique per file version): a cold read of a big file
        # asks for it once per 128 KiB FUSE read, and an indirect one costs chunk
        # fetches and a decode of every ref each time.
        cached = await self._manifests.get(content.sealed_manifest, lambda: self._open_manifest(content))
        if size is not None and cached.manifest.size != size:
            raise DamagedError(f"a file manifest describes {cached.manifest.size} bytes but its entry says {size}")
        return cached

    async def _open_manifest(self, content: FileRef) -> ManifestIndex:
        return ManifestIndex.of((await self.manifest_levels(content))[-1])

    async def manifest_levels(self, content: FileRef, size: int | None = None) -> list[Manifest]:
        """Every level of a file's manifest, outermost first; the last one is direct.

        The chunks of an indirect level hold the encoded next level, and live
        in packs like file data: whatever must reach every pack a file uses
        (audits, garbage collection) walks all levels, not just the last.
        A file nests at most MAX_MANIFEST_DEPTH levels deep (`_file_ref`
        never writes more); deeper is damage. DamagedError if a level does
        not open or the file's size is not `size`.
        """
        try:
            levels = [content.open()]
            while levels[-1].indirect:
                if len(levels) > MAX_MANIFEST_DEPTH:
                    raise DamagedError("a file manifest nests too deeply; it is damaged")
                inner = b"".join([await self.chunk(ref) for ref in levels[-1].chunks])
                levels.append(decode_manifest(inner))
        except CryptreeError as exc:
            raise DamagedError(f"a file manifest is damaged ({exc})") from exc
        if size is not None and levels[-1].size != size:
            raise DamagedError(f"a file manifest describes {levels[-1].size} bytes but its entry says {size}")
        return levels

    async def chunk(self, ref: ChunkRef) -> bytes:
        """One chunk's verified plaintext, from the read cache or fetched (concurrent asks share one fetch).

        DamagedError if its locator or its bytes fail verification.
        """
        return await self._chunks.get(ref.sealed_hash, lambda: self._fetch_chunk(ref))

    async def _fetch_chunk(self, ref: ChunkRef) -> bytes:
        try:
            locator = Locator.decode(ref.locator)
        except CryptreeError as exc:
            raise DamagedError(f"a chunk locator is damaged ({exc})") from exc
        sealed = await self.packs.read(locator)
        try:
            plain = await trio.to_thread.run_sync(open_chunk_ref, ref, sealed)
        except CryptreeError as exc:
            raise DamagedError(f"a chunk failed verification ({exc})") from exc
        return plain

    async def read(self, content: FileContent, offset: int, size: int, file_size: int | None = None) -> bytes:
        """`size` bytes of a file from `offset` (fewer at its end)."""
        if isinstance(content, InlineData):
            return content.data[offset : offset + size]
        index = await self._index(content, file_size)
        key = content.sealed_manifest
        if offset == 0 or self._read_ends.get(key) == offset:
            self._read_ahead(index, offset + size)
        self._read_ends[key] = offset + size
        if len(self._read_ends) > READ_AHEAD_FILES:
            del self._read_ends[next(iter(self._read_ends))]
        out = []
        for ref, start, stop in index.covering(offset, size):
            plain = await self.chunk(ref)
            out.append(plain[start:stop] if start or stop != len(plain) else plain)
        return out[0] if len(out) == 1 else b"".join(out)

    def _read_ahead(self, index: ManifestIndex, offset: int) -> None:
        """On sequential reads, start fetching the chunks after `offset` in the background.

        The kernel's own readahead asks for at most a few hundred KiB ahead; a
        chunk spans about 1 MiB, and fetching it takes a round trip to k peers
        per segment, so without this a sequential read waits on every chunk.
        """
        for ref, _, _ in index.covering(offset, READ_AHEAD_BYTES):
            if len(self._prefetching) >= READ_AHEAD_TASKS:
                return
            if ref.sealed_hash in self._prefetching or self._chunks.peek(ref.sealed_hash) is not None:
                continue
            self._prefetching.add(ref.sealed_hash)
            self._nursery.start_soon(self._prefetch, ref)

    async def _prefetch(self, ref: ChunkRef) -> None:
        try:
            await self.chunk(ref)
        except PlutoError as exc:
            log.debug("read-ahead of a chunk failed (the read itself will retry): %s", exc)
        finally:
            self._prefetching.discard(ref.sealed_hash)

    async def read_all(self, content: FileContent, size: int | None = None) -> bytes:
        """A whole file's bytes."""
        if isinstance(content, InlineData):
            return content.data
        manifest = await self.manifest(content, size)
        return b"".join([await self.chunk(ref) for ref in manifest.chunks])

    # ---- directories ------------------------------------------------------------

    async def load_folder(self, cap: ReadCap | WriteCap, missing_ok: bool = False) -> tuple[Directory, bool]:
        """A directory's verified entries, and whether several versions had to be merged to get them.

        Sibling versions (an interrupted write left one beside another) are
        merged entry by entry (cryptree/dirmerge.py), the same way on every
        device; a writer that finds them should publish the merge. An absent
        slot is an empty directory only if `missing_ok`.
        """
        slots = await self.slots.read_versions(cap.writer)
        if not slots:
            if missing_ok:
                return Directory(0, None, ()), False
            raise NotEnoughPeers("a folder's data is missing on every peer asked; it may be lost")
        opened: list[Directory] = []
        problem: CryptreeError | None = None
        for slot in slots:
            try:
                opened.append(open_directory(cap, slot))
            except CryptreeError as exc:
                problem = exc
        if not opened:
            raise DamagedError(f"a folder failed verification on the newest copy found ({problem})")
        return merge_all(opened), len(opened) > 1

    async def load_dir(self, cap: ReadCap | WriteCap, missing_ok: bool = False) -> Directory:
        """A directory's verified entries (siblings merged); an absent slot is empty only if `missing_ok`."""
        return (await self.load_folder(cap, missing_ok))[0]

    async def save_dir(
        self,
        cap: WriteCap,
        entries: list[DirEntry] | tuple[DirEntry, ...],
        attrs: DirAttrs | None,
        prev_seq: int,
        since: int | None = None,
        tombstones: list[Tombstone] | tuple[Tombstone, ...] = (),
    ) -> Directory:
        """Publish version `prev_seq + 1` of a directory, after everything it points to is stored.

        Compare-and-swap: ConflictError if a replica already holds another
        version that new (merge with it and try again); NotEnoughPeers if a
        majority of the replicas did not store it. `since` is the
        `upload_mark` taken before the entries' files were stored (see `flush`).
        """
        await self.flush(since)
        slot = seal_directory(cap, prev_seq + 1, entries, attrs, tombstones)
        await self.slots.write(slot)
        return Directory(slot.seq, attrs, tuple(sorted(entries, key=lambda e: e.name.encode())),
                         tuple(sorted(tombstones, key=lambda t: t.name.encode())))

    async def update_dir(
        self, cap: WriteCap, change: Callable[[dict[str, DirEntry]], DirAttrs | None], missing_ok: bool = False,
        since: int | None = None, base: Directory | None = None,
    ) -> Directory:
        """Read-modify-write a directory: `change` edits the name→entry map in place (and may return new attrs).

        The changed entries get versions that carry this device's change; if
        another writer published meanwhile, the two versions are merged entry
        by entry (nothing of theirs is dropped) and the merge is published.
        `base` is the version just read, when the caller has it (saves a read).
        """
        current = base if base is not None else await self.load_dir(cap, missing_ok=missing_ok)
        entries = current.by_name()
        attrs = change(entries) or current.attrs
        ours = versioned_update(current, entries, self.writer_tag, time.time_ns(), attrs)
        for attempt in range(UPDATE_MERGES):
            try:
                return await self.save_dir(cap, ours.entries, ours.attrs, ours.seq, since, ours.tombstones)
            except ConflictError:
                await trio.sleep(0.05 * attempt)
                ours = merge_directories(ours, await self.load_dir(cap, missing_ok=missing_ok))
        raise ConflictError("this folder keeps changing elsewhere; try again in a moment")


@asynccontextmanager
async def open_volume(home: Home, coordinator: str | None = None) -> AsyncIterator[Volume]:
    """Open the user's volume: connect to the coordinator, ready to read and write.

    Uploads still queued when the block ends are flushed first; the block's
    own exception, if any, wins.
    """
    config = home.config()
    keys = home.keys()
    async with open_pool(home.device_key()) as pool:
        net = Network(pool, coordinator or config.coordinator, timeout=config.request_timeout)
        slots = SlotReplicas(net, config.slot_replicas, config.repair_grace)
        pack_log = PackLog(home.path / "packs.sqlite")
        packs = PackStore(net, slots, keys.pack_key, config.k, config.n, config.happy, log=pack_log)
        error: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                volume = Volume(keys, net, slots, packs, nursery, writer_tag=home.writer_tag())
                try:
                    yield volume
                    await volume.flush()
                except Exception as exc:
                    error = exc
                nursery.cancel_scope.cancel()
        finally:
            pack_log.close()  # writes rows a full disk refused earlier, if it takes them now
        if error is not None:
            raise error
