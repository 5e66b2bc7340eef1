"""Packs on the network: upload (place fragments, sign the record) and ranged reads.

Upload: the pack is erasure-coded into n fragment columns; column i of every
segment goes to the i-th of n distinct peers from the coordinator. A peer
that fails is replaced by another (excluding every peer already tried);
the pack counts as stored once at least `happy` columns are placed, and the
columns still going then get a grace, not the request timeout. Then the
pack record (layout + which peer holds each column) is signed and replicated.
A column that no peer acknowledged is recorded as None, never as some peer:
the pack is *short* until the mount places it (`short_packs`, pluto_fs/volume/short_packs.py).

Read: the record (cached) tells which segments cover the wanted bytes; for
each segment, fragments are fetched from k peers at once, primaries first
(peers with recent trouble last), and every failure, bad fragment or fetch
unanswered after the hedge delay starts a fetch from the next column, until
k verified fragments are in hand or no column is left ("not enough peers").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import trio

from cryptree.caps import ReadCap
from cryptree.errors import CryptreeError
from cryptree.packrecord import Locator, PackRecord, open_pack_record, pack_write_cap, seal_pack_record
from pluto_fs.errors import DamagedFragment, NotEnoughPeers, QuotaExceeded
from pluto_fs.net.network import Network
from pluto_fs.net.quorum import run_until_enough
from pluto_fs.net.run_all import run_all
from pluto_fs.net.slot_replicas import SlotReplicas
from pluto_fs.store.erasure import decode_segment
from pluto_fs.store.fetch_cache import FetchCache
from pluto_fs.store.fetch_order import FetchOrder
from pluto_fs.store.pack_log import PackLog
from pluto_fs.store.packs import (
    DEFAULT_HAPPY,
    DEFAULT_K,
    DEFAULT_N,
    LayoutError,
    PackLayout,
    encode_pack,
    read_range,
)
from transport.errors import RemoteError, TransportError

log = logging.getLogger(__name__)

PLACEMENT_RETRIES = 3  # replacement peers tried per fragment column
FRAGMENTS_IN_FLIGHT = 4  # fragment uploads outstanding per peer and pack
# Seconds the columns still uploading get once `happy` are placed (twice what those took, within
# these bounds); a column cut off is recorded as None (no peer acknowledged it) and placed later.
UPLOAD_MIN_GRACE = 1.0
UPLOAD_MAX_GRACE = 10.0


@dataclass
class TransferStats:
    """Bytes moved to and from peers (for `pluto status` and the benchmarks)."""

    fragment_bytes_sent: int = 0
    fragment_bytes_received: int = 0
    packs_uploaded: int = 0
    chunk_bytes_packed: int = 0
    fetches_hedged: int = 0  # extra fragment fetches started because one was slow to answer
    columns_short: int = 0  # fragment columns of stored packs left unplaced (failed, or cut off after `happy`)


@dataclass
class PackStore:
    """Uploads and reads packs for one user."""

    net: Network
    slots: SlotReplicas
    pack_key: bytes
    k: int = DEFAULT_K
    n: int = DEFAULT_N
    happy: int = DEFAULT_HAPPY
    segment_size: int = 1 << 20
    # Small on purpose: decoded chunks are cached above (`Volume.chunk`), so this only has
    # to keep a segment between the two chunks that straddle it; a cache as large as the
    # chunk cache would hold a second copy of everything read in the mount's memory.
    segment_cache_bytes: int = 16 << 20
    stats: TransferStats = field(default_factory=TransferStats)
    log: PackLog | None = None
    fetch_order: FetchOrder = field(default_factory=FetchOrder)
    _records: dict = field(default_factory=dict)
    _segments: FetchCache[bytes] = field(init=False)
    # Packs whose record leaves a column without a peer: writer -> (nonce, read key). Mirrors the
    # pack log's `short` flag, so a restarted mount still places what an earlier one left short.
    _short: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)
    _short_added: trio.Event = field(default_factory=trio.Event)
    # One record rewrite at a time in this process: a repair reads the newest record and signs
    # seq + 1 under it, so two concurrent ones would sign two different records with one seq.
    record_lock: trio.Lock = field(default_factory=trio.Lock)

    def __post_init__(self) -> None:
        self._segments = FetchCache(self.segment_cache_bytes, len)
        if self.log is not None:
            for writer, nonce, read_key in self.log.short():
                self._short[writer] = (nonce, read_key)

    # ---- upload ---------------------------------------------------------------

    async def upload(self, nonce: bytes, data: bytes) -> PackRecord:
        """Erasure-code `data`, place its fragments and publish its signed record."""
        layout, fragments = await trio.to_thread.run_sync(encode_pack, data, self.k, self.n, self.segment_size)
        found = await self.net.find_peers(self.n)
        if len(found) < self.happy:
            raise NotEnoughPeers(
                f"only {len(found)} storage peers are available, {self.happy} needed to store data safely; "
                "start more peers or wait for them to come back"
            )
        tried: set[bytes] = {p.id for p in found}
        refusals: list[str] = []
        columns: list[bytes | None] = [p.id for p in found] + [None] * (self.n - len(found))
        placed = [False] * self.n

        async def place_column(i: int) -> None:
            peer = columns[i]
            for _ in range(PLACEMENT_RETRIES + 1):
                if peer is not None:
                    try:
                        client = await self.net.client(peer)
                        await self._put_column(client, layout, fragments, i)
                        columns[i] = peer
                        placed[i] = True
                        return
                    except RemoteError as exc:
                        if exc.code in ("quota", "full"):
                            refusals.append(exc.message)
                            if exc.code == "quota":
                                return  # the exchange limit is ours, not the peer's: others say the same
                        log.warning("placing fragment column %d failed: %s; trying another peer", i, exc)
                    except (TransportError, NotEnoughPeers) as exc:
                        log.warning("placing fragment column %d failed: %s; trying another peer", i, exc)
                spare = await self.net.find_peers(1, exclude=list(tried))
                if not spare:
                    return
                peer = spare[0].id
                tried.add(peer)

        # Once `happy` columns are placed the pack is safe; a silent peer then gets a grace, not
        # the request timeout, so one frozen peer does not make every fsync wait out the timeout.
        await run_until_enough([partial(place_column, i) for i in range(self.n)],
                               lambda: sum(placed) >= self.happy, UPLOAD_MIN_GRACE, UPLOAD_MAX_GRACE)
        if sum(placed) < self.happy and refusals:
            raise QuotaExceeded(f"no space to store more: {refusals[0]}")
        if sum(placed) < self.happy:
            raise NotEnoughPeers(
                f"stored only {sum(placed)} of {self.n} fragments of a pack ({self.happy} needed); "
                "check `pluto peers` and try again"
            )
        if sum(placed) < self.n:
            self.stats.columns_short += self.n - sum(placed)
            log.info("pack stored with %d of %d fragment columns; the rest are placed as soon as a peer is free",
                     sum(placed), self.n)
        # Only what a peer acknowledged is recorded: a column cut off or failed everywhere is None.
        # Naming a peer that never got it would make the grace count the column healthy, and could
        # name one peer for two columns.
        peers = tuple(columns[i] if placed[i] else None for i in range(self.n))
        record = await self.publish_record(nonce, 1, layout, peers)
        self.stats.packs_uploaded += 1
        return record

    async def publish_record(self, nonce: bytes, seq: int, layout: PackLayout,
                             peers: tuple[bytes | None, ...]) -> PackRecord:
        """Sign and replicate version `seq` of a pack's record; remember it, and whether it is short.

        Version 1 is the upload (the pack is logged); later versions come from
        repair (the log's short flag follows the record). Raises FormatError if
        `peers` names one peer for two columns.
        """
        cap = pack_write_cap(self.pack_key, nonce)
        record = PackRecord(layout.to_dict(), peers)
        await self.slots.write(seal_pack_record(cap, seq, record))
        self._records[cap.writer] = (layout, peers)
        short = None in peers
        if short:
            self._short[cap.writer] = (nonce, cap.read_key)
            self._short_added.set()
            self._short_added = trio.Event()
        else:
            self._short.pop(cap.writer, None)
        if self.log is not None:
            if seq == 1:
                self.log.add(cap.writer, nonce, cap.read_key, short)
            else:
                self.log.set_short(cap.writer, short)
        return record

    def short_packs(self) -> dict[bytes, tuple[bytes, bytes]]:
        """Packs with a fragment column no peer holds yet: writer -> (nonce, read key)."""
        return dict(self._short)

    def forget_short(self, writer: bytes) -> None:
        """Stop tracking a pack as short (it was collected, or its record is gone)."""
        self._short.pop(writer, None)
        if self.log is not None:
            self.log.set_short(writer, False)

    async def wait_short_added(self) -> None:
        """Return when the next short pack is published."""
        await self._short_added.wait()

    async def _put_column(self, client, layout: PackLayout, fragments: list[list[bytes]], i: int) -> None:
        """Send column `i` of every segment to one peer, a few requests in flight at once.

        Several at once because, one at a time, each fragment would wait a full
        round trip plus the peer's fsync before the next left (about 30 ms per
        350 KB fragment on loopback): that caps a pack's upload whatever the
        bandwidth. The first failure stops
        the column (the caller moves it to another peer).
        """

        def put(seg: int) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                frag = fragments[seg][i]
                await client.put_fragment(layout.segments[seg].fragment_ids[i], frag)
                self.stats.fragment_bytes_sent += len(frag)

            return call

        # drain: a refusal (over quota, full) lets the puts already streaming finish, so the
        # connection other packs share with this peer is not broken by a cancelled send.
        await run_all([put(seg) for seg in range(len(layout.segments))], FRAGMENTS_IN_FLIGHT,
                      (TransportError, NotEnoughPeers), drain=True)

    # ---- read -----------------------------------------------------------------

    async def fetch_record(self, record: ReadCap) -> tuple[int, PackLayout, tuple[bytes | None, ...]]:
        """The newest signed record of a pack: (seq, layout, peer per column, None if unplaced), uncached."""
        slot = await self.slots.read(record.writer)
        if slot is None:
            raise NotEnoughPeers("a pack record is missing on every peer asked; the data may be lost")
        try:
            seq, parsed = open_pack_record(record, slot)
            layout = PackLayout.from_dict(parsed.layout)
        except (CryptreeError, LayoutError) as exc:
            raise NotEnoughPeers(f"a pack record is damaged ({exc})") from exc
        if len(parsed.peers) != layout.n:
            raise NotEnoughPeers("a pack record names the wrong number of peers; it is damaged")
        self._records[record.writer] = (layout, parsed.peers)
        return seq, layout, parsed.peers

    async def _record(self, locator: Locator) -> tuple[PackLayout, tuple[bytes | None, ...]]:
        cached = self._records.get(locator.record.writer)
        if cached is not None:
            return cached
        _, layout, peers = await self.fetch_record(locator.record)
        return layout, peers

    async def read(self, locator: Locator) -> bytes:
        """The sealed chunk bytes at `locator` (verified fragments, decoded segments)."""
        layout, peers = await self._record(locator)
        if locator.offset + locator.length > layout.length:
            raise NotEnoughPeers("a chunk locator points outside its pack; the file is damaged")
        # A chunk usually straddles two segments or more: fetch them at once, not in turn.
        ranges = read_range(layout, locator.offset, locator.length)

        def fetch(index: int) -> Callable[[], Awaitable[bytes]]:
            return lambda: self._segment(locator.record.writer, layout, peers, index)

        segments = await run_all([fetch(rng.index) for rng in ranges])
        return b"".join(seg[rng.start : rng.stop] for seg, rng in zip(segments, ranges, strict=True))

    async def gather(
        self, layout: PackLayout, peers: tuple[bytes | None, ...], index: int, columns: Iterable[int]
    ) -> dict[int, bytes]:
        """k verified fragments of segment `index` from `columns`, k asked at a time.

        Every failure or bad fragment starts a fetch from the next column, and so
        does a fetch still unanswered after the hedge delay (a frozen peer costs
        one delay, not a timeout); peers with recent trouble are asked last
        (`FetchOrder`). A fragment that fails verification is reported against its peer.
        Columns without a peer (None: never placed) are not asked.
        """
        seg = layout.segments[index]
        got: dict[int, bytes] = {}
        errors: list[str] = []
        placed = [c for c in columns if peers[c] is not None]
        order = iter(self.fetch_order.order(peers, placed, self.net.listed_offline()))
        waiting: dict[int, float] = {}  # column -> when its fetch started

        async with trio.open_nursery() as nursery:

            def launch_next() -> bool:
                for col in order:
                    waiting[col] = trio.current_time()
                    nursery.start_soon(fetch, col)
                    return True
                return False

            async def fetch(col: int) -> None:
                try:
                    client = await self.net.client(peers[col])
                    data = await client.get_fragment(seg.fragment_ids[col], verify=True)
                    if len(data) != layout.fragment_length(index):
                        raise DamagedFragment("the fragment has the wrong length for its pack")
                except (TransportError, NotEnoughPeers, DamagedFragment) as exc:
                    del waiting[col]
                    errors.append(f"fragment {col}: {exc}")
                    self.fetch_order.troubled(peers[col])
                    if _failed_verification(exc):
                        nursery.start_soon(self.report, peers[col], False)
                    launch_next()
                    return
                self.fetch_order.answered(peers[col], trio.current_time() - waiting.pop(col))
                self.stats.fragment_bytes_received += len(data)
                got[col] = data
                if len(got) >= layout.k:
                    nursery.cancel_scope.cancel()

            async def hedge() -> None:
                while True:
                    await trio.sleep(self.fetch_order.hedge_delay())
                    if not launch_next():
                        return
                    self.stats.fetches_hedged += 1

            for _ in range(layout.k):
                launch_next()
            nursery.start_soon(hedge)
        # Whoever was still silent after a hedge delay when the segment was done is slow or gone.
        late = trio.current_time() - self.fetch_order.hedge_delay()
        for col, started in waiting.items():
            if started <= late:
                self.fetch_order.troubled(peers[col])
        if len(got) < layout.k:
            raise NotEnoughPeers(
                f"not enough peers: got {len(got)} of the {layout.k} fragments needed "
                f"({'; '.join(errors[-3:])}); bring peers back or wait for repair"
            )
        return got

    async def report(self, peer: bytes, ok: bool) -> None:
        """Tell the coordinator how a peer did (best effort: reputation is advisory)."""
        try:
            await self.net.coordinator.report_audit(peer, ok)
        except TransportError as exc:
            log.info("could not report an audit outcome: %s", exc)

    async def _segment(self, key: bytes, layout: PackLayout, peers: tuple[bytes | None, ...], index: int) -> bytes:
        # Chunks next to each other share segments, and readahead asks for them at once.
        return await self._segments.get((key, index), lambda: self._fetch_segment(layout, peers, index))

    async def _fetch_segment(self, layout: PackLayout, peers: tuple[bytes | None, ...], index: int) -> bytes:
        got = await self.gather(layout, peers, index, range(layout.n))
        return await trio.to_thread.run_sync(decode_segment, got, layout.k, layout.n, layout.segments[index].length)


def _failed_verification(exc: BaseException) -> bool:
    """The peer sent a fragment that failed a check made here: held against the peer, unlike a mere failure.

    The transport client refuses a fragment that does not match its id with
    the code "corrupt" (transport/peer/client.py `get_fragment`).
    """
    return isinstance(exc, DamagedFragment) or (isinstance(exc, RemoteError) and exc.code == "corrupt")
