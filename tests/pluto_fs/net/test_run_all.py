"""run_all: results in order, a concurrency limit, the first failure raised plainly."""

from __future__ import annotations

import pytest
import trio

from pluto_fs.errors import NotEnoughPeers
from pluto_fs.net.run_all import run_all


def test_results_keep_their_order_and_the_limit_holds() -> None:
    async def run() -> None:
        running = peak = 0

        def call(i: int):
            async def go() -> int:
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                await trio.sleep(0.01 * (5 - i % 5))  # later calls finish first
                running -= 1
                return i * i

            return go

        assert await run_all([call(i) for i in range(12)], limit=3) == [i * i for i in range(12)]
        assert peak == 3
        assert await run_all([]) == []

    trio.run(run)


def test_the_first_failure_stops_the_rest_and_is_raised_as_itself() -> None:
    async def run() -> None:
        finished = []

        async def slow() -> None:
            await trio.sleep(5)
            finished.append("slow")

        async def failing() -> None:
            await trio.sleep(0.01)
            raise NotEnoughPeers("only 2 peers")

        with trio.fail_after(2):  # the slow call is cancelled, not waited for
            with pytest.raises(NotEnoughPeers, match="only 2 peers"):
                await run_all([slow, failing, slow], catch=NotEnoughPeers)
        assert finished == []

    trio.run(run)


async def test_drain_lets_running_calls_finish_and_starts_no_new_one() -> None:
    events: list[str] = []
    b_running = trio.Event()

    async def a() -> None:
        events.append("start a")
        await b_running.wait()
        events.append("a refused")
        raise ValueError("refused")

    async def b() -> None:
        events.append("start b")
        b_running.set()
        await trio.sleep(0.05)  # still streaming when a is refused
        events.append("b done")

    def other(n: int):
        async def call() -> None:
            events.append(f"start {n}")

        return call

    with pytest.raises(ValueError, match="refused"):
        await run_all([a, b] + [other(n) for n in range(5)], limit=2, drain=True)
    assert "b done" in events  # not cancelled half-way
    refused = events.index("a refused")
    assert not any(e.startswith("start") for e in events[refused:]), events  # nothing new after the refusal
