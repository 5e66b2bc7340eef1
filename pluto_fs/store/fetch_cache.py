"""A byte-bounded LRU cache filled by single-flight fetches.

Decoded manifests, chunks and segments are each fetched from the network on
a miss; concurrent misses for one key (readahead, neighbouring chunks) must
share a fetch, and the result must be cached before the waiters resume. One
class keeps the cache and its in-flight map together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from pluto_fs.net.single_flight import SingleFlight

V = TypeVar("V")


class FetchCache(Generic[V]):
    """Up to `limit` bytes of values (sized by `size_of`), least recently used evicted first."""

    def __init__(self, limit: int, size_of: Callable[[V], int]) -> None:
        self.limit = limit
        self.size = 0
        self._size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._fetches: SingleFlight[V] = SingleFlight()

    def peek(self, key: Hashable) -> V | None:
        """The cached value, or None (no fetch)."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or the result of `fetch()` (shared with concurrent callers), then cached."""
        cached = self.peek(key)
        if cached is not None:
            return cached

        async def fill() -> V:
            value = await fetch()
            self._put(key, value)
            return value

        return await self._fetches.run(key, fill)

    def _put(self, key: Hashable, value: V) -> None:
        if key in self._items:
            return
        size = self._size_of(value)
        self._items[key] = (value, size)
        self.size += size
        while self.size > self.limit and self._items:
            _, (_, old) = self._items.popitem(last=False)
            self.size -= old
