"""When the mount tries again to place a short pack's missing column (pluto_fs/volume/short_packs.py)."""

from __future__ import annotations

import math

from pluto_fs.volume.short_packs import RETRY_FIRST, RETRY_MAX, RetrySchedule


def test_a_new_short_pack_is_tried_at_once_then_with_growing_waits_up_to_a_minute() -> None:
    s = RetrySchedule()
    assert s.next_try() == math.inf
    s.track({b"a"}, now=100.0)
    assert s.due(100.0) == [b"a"]
    tries, now = [], 100.0
    for _ in range(8):
        s.failed(b"a", now)
        now = s.next_try()
        tries.append(now)
        assert s.due(now - 0.01) == [] and s.due(now) == [b"a"]
    waits = [b - a for a, b in zip([100.0, *tries], tries, strict=False)]
    assert waits == [RETRY_FIRST, 4.0, 8.0, 16.0, 32.0, RETRY_MAX, RETRY_MAX, RETRY_MAX]


def test_packs_come_and_go_independently() -> None:
    s = RetrySchedule()
    s.track({b"a"}, now=0.0)
    s.failed(b"a", 0.0)
    s.failed(b"a", 2.0)  # a's next try at 6
    s.track({b"a", b"b"}, now=3.0)  # a new short pack does not wait for a's backoff
    assert s.due(3.0) == [b"b"] and s.next_try() == 3.0
    s.track({b"b"}, now=3.5)  # a was completed (by a repair elsewhere): forgotten
    assert s.due(100.0) == [b"b"]
    s.track(set(), now=4.0)
    assert s.next_try() == math.inf
