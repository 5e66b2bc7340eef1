"""Write-back: bring the network up to date with the namespace, in the background and on fsync.

File data is uploaded in batches (a thousand small files cost a few packs,
not a thousand); folders are published as new slot versions. Publishing
follows two rules that keep readers safe (publish_plan.py has the details):

- a directory version never names data that is not on the network yet: a
  file whose new bytes are still local is published with its previous
  content (or left out if it has none), and a new child directory is
  published before the parent that links it;
- a directory's journal rows are marked clean only once the network holds
  exactly that state and none of its children is waiting, so a crash at any
  point leaves enough in the journal to resume.

Several writers (other devices, followers with write access, two mounts)
publish the same folders: a publish is a compare-and-swap on the folder's
slot, and one that finds a newer version merges it into the tree entry by
entry (folder_merge.py) and publishes the merge. Nothing another writer
acknowledged is overwritten, and nothing of ours is dropped.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from cryptree.caps import WriteCap
from cryptree.dirnode import DirAttrs
from cryptree.filenode import FileContent, FileRef
from pluto_fs.errors import ConflictError, PlutoError
from pluto_fs.volume.volume import Volume
from pluto_fs.writeback.journal import Journal
from pluto_fs.writeback.journal_rows import put_moved_rows, record_published, sent_states
from pluto_fs.writeback.namespace import Namespace
from pluto_fs.writeback.nodes import DirNode, FileNode, Node, now_ns
from pluto_fs.writeback.publish_plan import note_published, note_sending, plan_publish

PUBLISH_CONCURRENCY = 16  # directory slots published at once
PUBLISH_MERGES = 5  # times one publish merges a newer version and tries again before giving up for the round
REFRESH_AFTER = 5.0  # seconds a loaded folder is trusted before opening it reads it again from the network
IDLE_UPLOAD_AFTER = 2.0  # seconds a file open for writing must be quiet before it uploads anyway
PUBLISH_EVERY = 0.5  # seconds between write-back rounds
UPLOAD_BATCH = 2000  # files per write-back round (bounds how long a round holds back folder publishing)


class Retrier(Protocol):
    """How a background loop runs one attempt and waits after a failure (pluto_fs/mount/retrying.py)."""

    async def attempt(self, fn: Callable[[], Awaitable[object]]) -> bool:
        """Run `fn` once: True if it succeeded, False if it failed (recorded)."""
        ...

    async def backoff(self) -> None:
        """Sleep the current backoff delay."""
        ...

    def delay(self) -> float:
        """Seconds to wait before the next attempt."""
        ...


class WriteBack:
    """Uploads `namespace`'s dirty files and publishes its changed folders through `volume`."""

    def __init__(self, namespace: Namespace, volume: Volume, journal: Journal) -> None:
        self._ns = namespace
        self._volume = volume
        self._journal = journal
        # Files being uploaded and the event set when that upload ends: an fsync that finds
        # the write-back storing its file waits for it instead of storing it a second time.
        self._uploading: dict[FileNode, trio.Event] = {}
        # Folders to read again from the network (opened after REFRESH_AFTER). The kernel is not
        # told which names a merge changed: it trusts entries for ENTRY_TIMEOUT (1 s) anyway, and a
        # reverse invalidation waits for the folder's lock, which a pending fsync(dir) holds: if the
        # mount is killed then, neither can finish and the fsync hangs for good (the fault checker
        # hit it).
        self._refresh_wanted: dict[DirNode, None] = {}
        self._refresh_event = trio.Event()

    # ---- file data -------------------------------------------------------------------

    async def upload_files(self, nodes: list[FileNode], wait_busy: bool = True) -> None:
        """Store dirty files' local copies on the network and record their new content.

        All files go into the same packs and are flushed once, so a thousand
        small files cost a few packs, not a thousand. A file another task is
        already uploading is not stored twice: with `wait_busy` (fsync) this
        waits for that upload and then stores whatever it did not cover;
        without (the write-back) it leaves the file to that task.
        """
        mine: list[FileNode] = []
        for node in nodes:
            while (busy := self._uploading.get(node)) is not None and wait_busy:
                await busy.wait()
            if node.dirty and node.cache_id is not None and node not in self._uploading:
                mine.append(node)
        if not mine:
            return
        done = trio.Event()
        for node in mine:
            self._uploading[node] = done
        try:
            await self._upload(mine)
        finally:
            for node in mine:
                del self._uploading[node]
            done.set()

    async def _upload(self, nodes: list[FileNode]) -> None:
        ns = self._ns
        mark = self._volume.upload_mark()
        staged = []
        for node in nodes:
            if not node.dirty or node.cache_id is None:
                continue
            version, cache_id = node.version, node.cache_id
            previous = None
            if isinstance(node.content, FileRef):
                try:
                    previous = await self._volume.manifest(node.content)
                except PlutoError:
                    previous = None  # dedup is an optimisation: store everything again
            content, size = await self._volume.store_file(ns.cache_path(cache_id), previous)
            staged.append((node, version, cache_id, content, size))
        await self._volume.flush(since=mark)
        before: list[tuple[FileNode, FileContent | None, int, int, int]] = []
        try:
            with self._journal.transaction():  # one commit for the whole batch
                for node, version, cache_id, content, size in staged:
                    if node.version != version or node.cache_id != cache_id:
                        continue  # written again meanwhile: the next round uploads the newer bytes
                    before.append((node, node.content, node.content_size, node.size, node.content_mtime_ns))
                    node.content, node.content_size, node.size, node.dirty = content, size, size, False
                    node.content_mtime_ns = node.mtime_ns
                    ns.dirty_files.discard(node)
                    if node.parent is not None:
                        # The new content is journaled in the same commit that drops the data row.
                        ns.touch_dir(node.parent, times=False, entry=node)
                    self._journal.drop_file(cache_id)
        except BaseException:
            # Not committed (a full disk): the journal still says pending, so must the namespace, or
            # the files' rows would stay pending in the journal for good. The retry finds the chunks
            # already placed (dedup) and only commits again.
            for node, content, content_size, size, mtime in before:
                node.content, node.content_size, node.size, node.dirty = content, content_size, size, True
                node.content_mtime_ns = mtime
                ns.dirty_files.add(node)
            raise

    # ---- folders ---------------------------------------------------------------------

    async def publish(self, d: DirNode) -> None:
        """Publish `d` (and first any never-published child directories) as a new slot version.

        A compare-and-swap on the folder's slot: if another writer published
        a newer version meanwhile, it is merged into the tree entry by entry
        (folder_merge.py) and the merge is published instead.
        """
        ns = self._ns
        if not isinstance(d.cap, WriteCap) or d.children is None:
            d.dirty = False
            ns.dirty_dirs.discard(d)
            return
        async with d.publish_lock:
            for child in list(d.children.values()):
                if isinstance(child, DirNode) and child.new:
                    await self.publish(child)
            for _attempt in range(PUBLISH_MERGES):
                version = d.version
                plan = plan_publish(d, ns.tag, ns.virtual_names(d), now_ns())
                attrs = DirAttrs(d.mode, d.uid, d.gid, d.atime_ns, d.mtime_ns, d.ctime_ns, d.xattrs)
                before = sent_states(plan)
                note_sending(d, plan)
                before = put_moved_rows(self._journal, d, plan, before)  # a crash mid-write must remember it too
                try:
                    await self._volume.save_dir(d.cap, plan.entries, attrs, d.seq, tombstones=plan.tombstones)
                    break
                except ConflictError:
                    remote, _ = await self._volume.load_folder(d.cap, missing_ok=d is ns.root)
                    ns.merge(d, remote)
            else:
                raise ConflictError("a folder keeps changing elsewhere; will retry")
            d.seq += 1
            d.refreshed = trio.current_time()
            revived, unshadowed = note_published(d, plan)
            was_new = d.new
            d.new = False
            # `version` bumps on every change, so an unchanged version means the network now
            # holds exactly what the rows say: they may be marked clean.
            clean = d.version == version and not plan.held_back
            with self._journal.transaction():
                put_moved_rows(self._journal, d, plan, before)
                record_published(self._journal, d, revived, unshadowed, clean)
                if was_new and d.parent is not None:
                    ns.touch_dir(d.parent, times=False, entry=d)  # the parent can now link it
            if clean:  # only once the journal says so too (a full disk keeps both saying "dirty")
                d.dirty = False
                ns.dirty_dirs.discard(d)

    async def publish_dirty(self) -> None:
        """Publish every changed directory: deepest first, those at one depth concurrently."""
        ns = self._ns
        ns.dirty_dirs -= {d for d in ns.dirty_dirs if d.parent is None and d is not ns.root}
        by_depth: dict[int, list[DirNode]] = {}
        for d in ns.dirty_dirs:
            by_depth.setdefault(_depth(d), []).append(d)
        limit = trio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(d: DirNode) -> None:
            async with limit:
                await self.publish(d)

        for depth in sorted(by_depth, reverse=True):
            async with trio.open_nursery() as nursery:
                for d in by_depth[depth]:
                    nursery.start_soon(one, d)

    # ---- changes made elsewhere ---------------------------------------------------------

    async def refresh(self, d: DirNode, force: bool = False) -> None:
        """Read `d` again from the network if it was read more than REFRESH_AFTER ago (always with `force`),
        and merge what changed elsewhere (other devices, followers writing into a share)."""
        ns = self._ns
        if d.children is None or d.cap is None or d.new or d is ns.shared:
            return
        if not force and trio.current_time() - d.refreshed < REFRESH_AFTER:
            return
        async with d.publish_lock:  # never in the middle of this folder's publish
            remote, siblings = await self._volume.load_folder(d.cap, missing_ok=d is ns.root)
            d.refreshed = trio.current_time()
            if remote.seq > d.seq or siblings:
                ns.merge(d, remote)
                if siblings and isinstance(d.cap, WriteCap):
                    ns.touch_dir(d, times=False)  # publish the merge so the siblings stop there

    def want_refresh(self, d: DirNode) -> None:
        """Ask the background refresher to read `d` again (opening a folder does, after REFRESH_AFTER)."""
        if d.children is not None and trio.current_time() - d.refreshed >= REFRESH_AFTER:
            self._refresh_wanted[d] = None
            self._refresh_event.set()

    async def run_refresh(self, retrying: Retrier) -> None:
        """Forever: read folders that were opened again from the network and merge what changed elsewhere
        (a failed read keeps the local view; the folder is read again the next time it is opened)."""
        while True:
            await self._refresh_event.wait()
            self._refresh_event = trio.Event()
            while self._refresh_wanted:
                d = next(iter(self._refresh_wanted))
                del self._refresh_wanted[d]
                if not await retrying.attempt(functools.partial(self.refresh, d)):
                    await trio.sleep(retrying.delay())

    # ---- fsync, sync, unmount -------------------------------------------------------------

    async def sync_path(self, node: Node) -> None:
        """fsync: upload `node`'s data if needed, then publish every changed directory above it."""
        if isinstance(node, FileNode) and node.dirty:
            await self.upload_files([node])
        d = node if isinstance(node, DirNode) else node.parent
        while d is not None and (d.dirty or d.new):
            await self.publish(d)
            d = d.parent
        await trio.to_thread.run_sync(self._journal.sync)

    async def sync_dir(self, d: DirNode) -> None:
        """fsync of a folder: its entries as they are now are on the network when this returns.

        The data of dirty files directly in it is uploaded first, so their
        entries can be published (a file whose data is not stored is left out
        of a published version); then the folder and every changed folder
        above it are published, and the journal is synced.
        """
        if d.parent is None and d is not self._ns.root:
            return  # removed: nothing links it any more
        if d.children is not None:
            await self.upload_files([n for n in d.children.values() if isinstance(n, FileNode) and n.dirty])
        node: DirNode | None = d
        while node is not None:
            if node.dirty or node.new:
                await self.publish(node)
            node = node.parent
        await trio.to_thread.run_sync(self._journal.sync)

    async def flush_all(self) -> None:
        """Upload every dirty file and publish every changed directory (unmount, `sync`)."""
        ns = self._ns
        for _ in range(5):
            ns.dirty_files -= {f for f in ns.dirty_files if f.parent is None}
            await self.upload_files(list(ns.dirty_files))
            await self.publish_dirty()
            if not ns.dirty_files and not ns.dirty_dirs:
                break
        await trio.to_thread.run_sync(self._journal.sync)

    def pending(self) -> tuple[int, int, int]:
        """(dirty files, their bytes, directories waiting) for `pluto status`."""
        ns = self._ns
        files = [f for f in ns.dirty_files if f.parent is not None]
        # Journaled folders not replayed yet hold changes too (replay_journal is on its way to them).
        return len(files), sum(f.size for f in files), len(ns.dirty_dirs) + ns.journaled_folders_waiting()

    # ---- the background loop ---------------------------------------------------------------

    async def round(self) -> None:
        """One write-back round: upload the files that are quiet (closed, or idle for IDLE_UPLOAD_AFTER),
        at most UPLOAD_BATCH of them, then publish every changed folder."""
        ns = self._ns
        now = time.monotonic()
        ns.dirty_files -= {f for f in ns.dirty_files if f.parent is None}
        ready = [f for f in ns.dirty_files if f.writers == 0 or now - f.last_write > IDLE_UPLOAD_AFTER]
        try:
            await self.upload_files(ready[:UPLOAD_BATCH], wait_busy=False)
        finally:
            # Folder changes go out even when file data could not (a rename, a delete, files already
            # stored): one file that cannot upload must not hold every folder back.
            await self.publish_dirty()

    async def run(self, retrying: Retrier) -> None:
        """Forever: after each change (or every PUBLISH_EVERY), run a round; a failed round is retried
        after a backoff."""
        while True:
            await self._ns.wait_for_change(PUBLISH_EVERY)
            await trio.sleep(PUBLISH_EVERY)  # let a burst of changes settle into one publish
            if not await retrying.attempt(self.round):
                await retrying.backoff()


def _depth(d: Node) -> int:
    depth = 0
    while d.parent is not None:
        d = d.parent
        depth += 1
    return depth
