"""FetchOrder and run_until_enough: how silent peers are worked around (on trio's virtual clock)."""

from __future__ import annotations

import trio
import trio.testing

from pluto_fs.net.quorum import MAX_GRACE, MIN_GRACE, run_until_enough
from pluto_fs.store.fetch_order import FIRST_HEDGE_DELAY, FetchOrder

PEERS = (b"p0", b"p1", b"p2", b"p3", b"p4")


def _run(fn) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_troubled_peers_go_after_the_others_and_offline_ones_last_until_the_trouble_is_old() -> None:
    async def run() -> None:
        order = FetchOrder(trouble_ttl=60)
        assert order.order(PEERS, range(5)) == [0, 1, 2, 3, 4]  # primaries first
        order.troubled(b"p0")
        assert order.order(PEERS, range(5), offline={b"p1"}) == [2, 3, 4, 0, 1]
        assert order.troubled_peers() == [b"p0"]
        order.answered(b"p2", 0.01)
        assert order.order(PEERS, [4, 2, 0]) == [4, 2, 0]  # only a rank reorders; the given order stays
        await trio.sleep(61)
        assert order.order(PEERS, range(5)) == [0, 1, 2, 3, 4]
        assert order.troubled_peers() == []
        order.troubled(b"p3")
        order.answered(b"p3", 0.02)  # answering again clears it at once
        assert order.order(PEERS, range(5)) == [0, 1, 2, 3, 4]

    _run(run)


def test_the_hedge_delay_follows_the_usual_fetch_time_within_bounds() -> None:
    order = FetchOrder(min_hedge=0.25, max_hedge=5.0)
    assert order.hedge_delay() == FIRST_HEDGE_DELAY
    order.answered(b"p0", 0.001)
    assert order.hedge_delay() == 0.25
    for _ in range(100):
        order.answered(b"p0", 0.5)
    assert 1.9 < order.hedge_delay() <= 2.0
    for _ in range(100):
        order.answered(b"p0", 30.0)
    assert order.hedge_delay() == 5.0


def test_once_enough_answered_a_silent_call_is_cut_after_a_grace() -> None:
    async def run() -> None:
        answered: list[int] = []

        def call(i: int, delay: float):
            async def go() -> None:
                await trio.sleep(delay)
                answered.append(i)

            return go

        start = trio.current_time()
        # three answer within 0.1 s, one a little later, one never (a frozen peer)
        calls = [call(0, 0.05), call(1, 0.1), call(2, 0.1), call(3, 0.15), call(4, 1e9)]
        await run_until_enough(calls, lambda: len(answered) >= 3)
        took = trio.current_time() - start
        assert sorted(answered) == [0, 1, 2, 3]  # the slower-but-healthy one was still heard
        assert 0.1 + MIN_GRACE <= took <= 0.1 + max(MIN_GRACE, 0.2) + 1e-6

        answered.clear()
        start = trio.current_time()
        await run_until_enough([call(0, 50), call(1, 50), call(2, 50), call(3, 1e9)], lambda: len(answered) >= 3)
        assert trio.current_time() - start <= 50 + MAX_GRACE + 1e-6  # slow network: the grace is capped

    _run(run)


def test_when_everyone_answers_nobody_waits_for_the_grace_and_too_few_answers_end_it_too() -> None:
    async def run() -> None:
        async def quick() -> None:
            await trio.sleep(0.01)

        async def fails() -> None:
            await trio.sleep(0.01)

        start = trio.current_time()
        await run_until_enough([quick, quick, quick], lambda: True)
        assert trio.current_time() - start < 0.011
        await run_until_enough([fails, fails], lambda: False)  # never enough: ends when all have ended
        await run_until_enough([], lambda: False)

    _run(run)
