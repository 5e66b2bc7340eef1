"""Run several awaitables at once; the first failure stops the rest and is raised as itself.

trio raises a nursery's errors as an exception group; callers here want the
plain error one awaited call would have raised (NotEnoughPeers, a transport
error), and want the others stopped as soon as one has failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

T = TypeVar("T")


async def run_all(
    calls: Sequence[Callable[[], Awaitable[T]]],
    limit: int | None = None,
    catch: type[Exception] | tuple[type[Exception], ...] = Exception,
    drain: bool = False,
) -> list[T]:
    """Await every call, at most `limit` at a time; results in the order of `calls`.

    The first exception of a `catch` type cancels the calls still running
    and is re-raised once they have stopped. With `drain`, the calls already
    running are let finish instead (no new one starts): cancelling a
    streamed upload half-way breaks the connection it shares with every
    other transfer to that peer. Others propagate as trio does.
    """
    results: list[T | None] = [None] * len(calls)
    errors: list[Exception] = []
    slots = trio.Semaphore(limit or max(1, len(calls)))

    async def one(i: int) -> None:
        async with slots:
            if errors:
                return  # draining: start nothing new
            try:
                results[i] = await calls[i]()
            except catch as exc:
                errors.append(exc)
                if not drain:
                    nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
