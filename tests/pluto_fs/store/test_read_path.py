"""Read-path helpers: chunk lookup by offset and shared concurrent fetches."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import trio

from cryptree.filenode import ChunkRef, Manifest
from pluto_fs.net.single_flight import SingleFlight
from pluto_fs.store.fetch_cache import FetchCache
from pluto_fs.store.manifest_index import ManifestIndex


class CountingFetch:
    """Fetches that take `delay` seconds each, counted in `calls`."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    def of(self, value: bytes) -> Callable[[], Awaitable[bytes]]:
        """A fetch that returns `value`."""

        async def go() -> bytes:
            self.calls += 1
            await trio.sleep(self.delay)
            return value

        return go


def _ref(i: int, length: int) -> ChunkRef:
    tag = bytes([i % 256]) * 32
    return ChunkRef(chunk_id=tag, length=length, chunk_key=tag, sealed_hash=tag, locator=b"x" * 40)


def test_covering_matches_a_linear_scan() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(1, 5000) for _ in range(300)]
    index = ManifestIndex.of(Manifest.of([_ref(i, n) for i, n in enumerate(lengths)]))
    data = b"".join(bytes([i % 256]) * n for i, n in enumerate(lengths))
    for _ in range(2000):
        offset = rng.randint(0, len(data) + 10)
        size = rng.randint(0, 20000)
        got = b"".join(bytes([ref.chunk_id[0]]) * (stop - start) for ref, start, stop in index.covering(offset, size))
        assert got == data[offset : offset + size]


def test_concurrent_callers_share_one_fetch_and_its_error() -> None:
    async def run() -> None:
        flight: SingleFlight[bytes] = SingleFlight()
        fetch = CountingFetch(0.05)
        results = []

        async def one() -> None:
            results.append(await flight.run("k", fetch.of(b"v")))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        assert results == [b"v"] * 10 and fetch.calls == 1 and len(flight) == 0

        async def broken() -> bytes:
            await trio.sleep(0.05)
            raise ValueError("peers gone")

        errors = []

        async def failing() -> None:
            try:
                await flight.run("k", broken)
            except ValueError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(failing)
        assert errors == ["peers gone"] * 3

    trio.run(run)


def test_a_cancelled_fetch_does_not_cancel_the_callers_waiting_on_it() -> None:
    async def run() -> None:
        flight: SingleFlight[bytes] = SingleFlight()
        fetch = CountingFetch(0.2)
        got = []

        async def patient() -> None:
            await trio.sleep(0.01)  # arrives while the impatient caller's fetch runs
            got.append(await flight.run("k", fetch.of(b"v")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(patient)
            with trio.move_on_after(0.05):
                await flight.run("k", fetch.of(b"v"))
        assert got == [b"v"] and fetch.calls == 2

    trio.run(run)


def test_fetch_cache_shares_misses_caches_results_and_evicts_by_bytes() -> None:
    async def run() -> None:
        cache: FetchCache[bytes] = FetchCache(10, len)
        fetch = CountingFetch(0.02)

        got = []

        async def reader() -> None:
            got.append(await cache.get("a", fetch.of(b"aaaa")))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(reader)
        assert got == [b"aaaa"] * 5 and fetch.calls == 1
        assert cache.peek("a") == b"aaaa" and await cache.get("a", fetch.of(b"other")) == b"aaaa" and fetch.calls == 1
        await cache.get("b", fetch.of(b"bbbb"))
        assert cache.peek("a") == b"aaaa"  # touched: "b" is now the oldest
        await cache.get("c", fetch.of(b"cccc"))  # 12 bytes > 10: the least recently used goes
        assert cache.peek("b") is None and cache.peek("a") == b"aaaa" and cache.size == 8

    trio.run(run)
