"""The durability simulator's core (tools/simulate): small networks, seconds.

numpy is needed; the test is skipped where it is not installed.
"""

from __future__ import annotations

import dataclasses

import pytest

np = pytest.importorskip("numpy")

from tools.simulate import Code, Params, Timeline, simulate, wilson  # noqa: E402
from tools.simulate.cli import parse_codes, table  # noqa: E402

SMALL = Params(peers=300, packs=2_000, warmup_days=10, days=100, availability_sample=200)


def _run(code: Code, **over) -> dict:
    p = dataclasses.replace(SMALL, **over)
    return simulate(p, code, Timeline(p), check=True)  # check: incremental counts == recomputed, every audit


def test_no_permanent_loss_loses_nothing() -> None:
    # peers come and go for days (sessions, long absences) but never lose a store
    calm = dict(departures_per_year=0.0, disk_failures_per_year=0.0, joins_per_year=0.0)
    for code in (Code(3, 5, 0), Code(10, 16, 12), Code(3, 5, 5)):
        r = _run(code, **calm)
        assert r["losses"] == 0 and r["lost_in_warmup"] == 0
        assert r["peer_events"] == {"departures": 0, "disk_failures": 0, "joins": 0, "mass_failures": 0}
    # ...while repair still reacts to peers that stay away longer than the grace period (false alarms)
    assert r["false_alarms_per_peer_year"] > 0 and r["repairs_per_pack_year"] > 0


def test_heavy_loss_without_repair_loses_packs_and_repair_saves_them() -> None:
    heavy = dict(departures_per_year=2.0, disk_failures_per_year=0.5)
    none = _run(Code(3, 5, 0), **heavy)
    assert none["repair_per_byte_year"] == 0 and none["repairs_per_pack_year"] == 0
    assert none["p_loss_lo"] > 0.2  # most fragments die within the year: many packs go
    eager = _run(Code(3, 5, 5), **heavy)
    assert eager["repairs_per_pack_year"] > 0
    assert eager["p_loss_hi"] < none["p_loss_lo"] / 5


def test_deterministic_for_a_seed_and_varies_with_it() -> None:
    code = Code(4, 8, 6)
    a, b = _run(code), simulate(SMALL, code)  # fresh timeline, no checks: the same numbers
    for r in (a, b):
        r.pop("seconds")
    assert a == b
    c = simulate(dataclasses.replace(SMALL, seed=2), code)
    c.pop("seconds")
    assert c != a


def test_every_code_sees_the_same_network() -> None:
    p = SMALL
    tl = Timeline(p)
    r1 = simulate(p, Code(3, 5, 4), tl)
    r2 = simulate(p, Code(10, 16, 14), tl)
    assert r1["peer_events"] == r2["peer_events"] and r1["peer_availability"] == r2["peer_availability"]
    with pytest.raises(ValueError):
        simulate(dataclasses.replace(p, grace_hours=24.0), Code(3, 5, 4), tl)


def test_eager_repair_costs_more_and_loses_no_more() -> None:
    lazy, eager = _run(Code(4, 8, 5)), _run(Code(4, 8, 8))
    assert eager["repair_per_byte_year"] > 2 * lazy["repair_per_byte_year"] > 0
    assert eager["losses"] <= lazy["losses"]
    # a repair downloads k fragments and uploads the rebuilt ones: per repair, 1 + rebuilt/k packs
    assert lazy["repair_per_byte_year"] == pytest.approx(
        lazy["repairs_per_pack_year"] + lazy["fragments_rebuilt_per_pack_year"] / 4)


def test_peer_model_matches_its_parameters() -> None:
    p = dataclasses.replace(SMALL, peers=2_000, days=365, departures_per_year=0.3)
    r = simulate(p, Code(3, 5, 0), Timeline(p))
    assert abs(r["peer_availability"] - p.availability) < 0.03
    assert r["peer_events"]["departures"] == pytest.approx(0.3 * 2_000, rel=0.2)
    assert r["peer_events"]["joins"] == pytest.approx(0.3 * 2_000, rel=0.2)
    assert r["peer_events"]["disk_failures"] == pytest.approx(0.02 * 2_000, rel=0.5)


def test_literal_online_rule_repairs_on_every_absence() -> None:
    grace, online = _run(Code(3, 5, 4)), _run(Code(3, 5, 4), healthy="online")
    assert online["repair_per_byte_year"] > 10 * grace["repair_per_byte_year"]


def test_helpers() -> None:
    assert [(c.k, c.n, c.threshold) for c in parse_codes("3-5,4-8@6/7")] == [
        (3, 5, 0), (3, 5, 4), (3, 5, 5), (4, 8, 6), (4, 8, 7)]
    with pytest.raises(ValueError):
        Code(3, 5, 3)  # a threshold must leave a fragment to rebuild from: k < T <= n
    lo, hi = wilson(0, 1_000)
    assert lo == 0 and 0.003 < hi < 0.004  # about 3.84 / n
    lo, hi = wilson(50, 1_000)
    assert lo < 0.05 < hi
    r = _run(Code(3, 5, 4))
    assert "3-of-5" in table([r])
