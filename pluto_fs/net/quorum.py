"""Run calls to several peers at once, and stop waiting for stragglers once enough answered.

A frozen or black-holed peer never fails, it only stays silent; waiting for
every replica would make each slot read and write cost the full transport
timeout whenever one peer is frozen. A majority settles a slot (writes land
on a majority, so a majority of answers includes the newest version); the
others get a grace of twice the time the majority took (within bounds), so a
healthy but slower replica is still heard without a frozen one costing more
than that. Pack uploads use the same rule with `happy` columns as "enough"
and a longer grace (a column is megabytes, not a slot).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

MIN_GRACE = 0.05  # seconds: loopback answers come within a millisecond or two
MAX_GRACE = 1.0


async def run_until_enough(calls: Sequence[Callable[[], Awaitable[None]]], enough: Callable[[], bool],
                           min_grace: float = MIN_GRACE, max_grace: float = MAX_GRACE) -> None:
    """Run `calls` at once; once `enough()` holds, give the rest twice as long as that took
    (between `min_grace` and `max_grace` seconds), then cancel them."""
    if not calls:
        return
    reached = trio.Event()
    pending = len(calls)
    started = trio.current_time()

    async with trio.open_nursery() as nursery:

        async def one(call: Callable[[], Awaitable[None]]) -> None:
            nonlocal pending
            try:
                await call()
            finally:
                pending -= 1
                if pending == 0:
                    nursery.cancel_scope.cancel()  # all answered: no grace to wait out
                elif enough():
                    reached.set()

        async def cut_stragglers() -> None:
            await reached.wait()
            await trio.sleep(min(max_grace, max(min_grace, 2 * (trio.current_time() - started))))
            nursery.cancel_scope.cancel()

        for call in calls:
            nursery.start_soon(one, call)
        nursery.start_soon(cut_stragglers)
