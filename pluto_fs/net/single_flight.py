"""Concurrent requests for the same thing share one fetch.

The kernel's readahead sends several reads into the same chunk at once; without
this each of them fetched (and paid for) the same fragments from the peers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

V = TypeVar("V")


class _Call(Generic[V]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[V]):
    """Run at most one `fetch` per key at a time; callers that arrive meanwhile get its result."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        """`await fetch()`, or the result of the fetch already running for `key`.

        If the running fetch fails, every waiter gets its error; if it was
        cancelled (its caller gave up, e.g. a timed-out FUSE request), the
        waiters do not inherit that: one of them fetches again.
        """
        while True:
            call = self._calls.get(key)
            if call is None:
                break
            await call.done.wait()
            if call.error is None:
                return call.value  # type: ignore[return-value]
            if not isinstance(call.error, trio.Cancelled):
                raise call.error
        call = _Call()
        self._calls[key] = call
        try:
            call.value = await fetch()
            return call.value
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            del self._calls[key]
            call.done.set()
