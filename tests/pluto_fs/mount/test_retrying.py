"""Background-loop failure handling (pluto_fs/mount/retrying.py): groups caught, logged once, counted, backoff."""

from __future__ import annotations

import logging
import sqlite3

import pytest
import trio
import trio.testing

from pluto_fs.errors import NotEnoughPeers
from pluto_fs.mount.retrying import Problems, Retrying, describe, leaf_errors


def _group(*errors: BaseException) -> BaseExceptionGroup:
    return BaseExceptionGroup("nursery", list(errors))


def test_leaf_errors_flattens_nested_groups_in_order() -> None:
    a, b, c = NotEnoughPeers("a"), OSError("b"), ValueError("c")
    assert leaf_errors(_group(a, _group(b, _group(c)))) == [a, b, c]
    assert leaf_errors(a) == [a]


def test_describe_names_distinct_messages_and_counts_the_rest() -> None:
    errors = [NotEnoughPeers("x"), NotEnoughPeers("x"), OSError("y"), ValueError("z"), KeyError()]
    assert describe(errors) == "x; y (and 2 more)"


async def test_a_group_of_errors_from_a_nursery_is_caught_counted_and_the_loop_can_go_on() -> None:
    r = Retrying("write-back", clock=lambda: 1000.0)

    async def publish_two_folders() -> None:
        async def one() -> None:
            raise NotEnoughPeers("only 2 of 5 peers stored the update (need 3)")

        async with trio.open_nursery() as nursery:  # strict groups: an ExceptionGroup, never the plain error
            nursery.start_soon(one)
            nursery.start_soon(one)

    assert await r.attempt(publish_two_folders) is False
    assert await r.attempt(publish_two_folders) is False
    assert r.as_status() == {"count": 2, "since": 1000.0, "last": "only 2 of 5 peers stored the update (need 3)"}

    async def works() -> None:
        return None

    assert await r.attempt(works) is True
    assert r.as_status() is None and r.delay() == 0


async def test_cancellation_passes_through_an_attempt() -> None:
    r = Retrying("write-back")

    async def forever() -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0.01) as scope:
        await r.attempt(forever)
    assert scope.cancelled_caught and r.count == 0


async def test_errors_mixed_with_cancellation_are_recorded_and_the_cancellation_still_propagates() -> None:
    r = Retrying("write-back")

    async def body() -> None:
        async def fails_while_cancelled() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise sqlite3.OperationalError("database or disk is full") from None  # e.g. failed cleanup

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails_while_cancelled)
            await trio.sleep_forever()  # the body's Cancelled joins the child's error in one group

    with trio.move_on_after(0.01) as scope:
        await r.attempt(body)
    assert scope.cancelled_caught, "the cancellation must reach the scope that asked for it"
    assert r.count == 1 and r.last == "database or disk is full"


def test_the_same_failure_is_logged_once_and_a_new_one_again(caplog: pytest.LogCaptureFixture) -> None:
    r = Retrying("write-back")
    with caplog.at_level(logging.WARNING, logger="pluto_fs.mount.retrying"):
        for stored in (2, 1, 2, 0) * 5:  # only the figures change: not news
            r.failed(_group(NotEnoughPeers(f"only {stored} of 5 peers stored the update (need 3)")))
        r.failed(sqlite3.OperationalError("database or disk is full"))
        r.failed(sqlite3.OperationalError("database or disk is full"))
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 2, lines
    assert "first attempt" in lines[0] and "stored the update" in lines[0]
    assert "attempt 21" in lines[1] and "disk is full" in lines[1]
    assert r.count == 22


def test_an_unexpected_error_is_logged_with_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    r = Retrying("write-back")
    try:
        {}["missing"]
    except KeyError as exc:
        bug = exc
    with caplog.at_level(logging.WARNING, logger="pluto_fs.mount.retrying"):
        r.failed(_group(bug))
        r.failed(_group(bug))
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.ERROR and caplog.records[0].exc_info is not None
    assert "a bug" in caplog.records[0].getMessage()


def test_backoff_doubles_up_to_its_cap() -> None:
    r = Retrying("x", base_delay=1.0, max_delay=10.0)
    delays = []
    for _ in range(6):
        r.failed(OSError("no"))
        delays.append(r.delay())
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_problems_reports_only_the_loops_failing_now() -> None:
    problems = Problems()
    problems.loop("write_back", "write-back").failed(OSError("disk full"))
    problems.loop("audit", "background audit")
    status = problems.as_status()
    assert list(status) == ["write_back"] and status["write_back"]["name"] == "write-back"
    assert status["write_back"]["count"] == 1 and status["write_back"]["last"] == "disk full"


def test_backoff_sleeps_the_delay_on_the_trio_clock() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)  # no real sleeping
    r = Retrying("x", base_delay=30.0, max_delay=60.0)
    r.failed(OSError("no"))
    trio.run(r.backoff, clock=clock)
    assert clock.current_time() == pytest.approx(30.0)
