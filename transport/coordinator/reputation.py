"""How the coordinator judges a peer: uptime, audit reputation, and what follows from them.

Pure functions of a peer's row and the time, no I/O, so the rules can be
tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from transport.coordinator.limits import CoordinatorLimits

REPUTATION_HALF_LIFE = 7 * 86400.0  # old audit outcomes fade: a week-old failure weighs half
FAILURE_WEIGHT = 4.0  # a failed proof is evidence of loss or cheating; a pass only of luck so far
FAILURES_PER_REPORT_MAX = 16  # failures one report can add (times its reporter's weight)


def reporter_weight(stored_bytes: int, full_weight_bytes: int) -> float:
    """How much one reporter's audit report counts, in [0, 1].

    `stored_bytes` is what the audited peer itself last reported storing for
    the reporter (its heartbeat). A key that stores nothing there has weight
    0: it has no fragment to challenge, so its "report" is an opinion. A key
    storing `full_weight_bytes` or more counts fully, and never more, so one
    big client is one voice and a swarm of keys that each stored a few bytes
    counts for the bytes they stored, not for their number.
    """
    if stored_bytes <= 0:
        return 0.0
    return min(1.0, stored_bytes / max(1, full_weight_bytes))


def decay_audit_weights(
    ok_w: float, fail_w: float, elapsed: float, half_life: float = REPUTATION_HALF_LIFE
) -> tuple[float, float]:
    """Audit weights after `elapsed` seconds of forgetting."""
    factor = 0.5 ** (max(0.0, elapsed) / half_life)
    return ok_w * factor, fail_w * factor


def reputation_score(ok_w: float, fail_w: float) -> float:
    """Exponentially weighted ok-ratio with a uniform prior: 0.5 with no evidence.

    The +1/+2 prior keeps a peer with one lucky (or unlucky) audit away from
    the extremes, and forgetting pulls every score back towards 0.5, so both
    old failures and old successes stop counting. Failures weigh
    FAILURE_WEIGHT times a success: a peer that lost half its fragments
    scores about 1/(1+FAILURE_WEIGHT) and drops below the placement floor
    within a few audits, instead of hovering at 0.5.
    """
    return (ok_w + 1.0) / (ok_w + FAILURE_WEIGHT * fail_w + 2.0)


def add_audit(
    ok_w: float,
    fail_w: float,
    elapsed: float,
    ok: bool,
    half_life: float = REPUTATION_HALF_LIFE,
    *,
    failed: int = 1,
    weight: float = 1.0,
) -> tuple[float, float]:
    """Weights after forgetting for `elapsed` seconds and then counting one report.

    A report with failures adds `weight` per failure (at most
    FAILURES_PER_REPORT_MAX) to the failed weight and nothing to the ok
    weight, whatever else passed in that run; a clean report (`ok`) adds
    `weight` once to the ok weight, however many fragments passed.
    """
    ok_w, fail_w = decay_audit_weights(ok_w, fail_w, elapsed, half_life)
    if ok:
        return ok_w + weight, fail_w
    return ok_w, fail_w + weight * min(max(failed, 1), FAILURES_PER_REPORT_MAX)


def uptime_fraction(heartbeats: int, first_seen: float, interval: float, now: float) -> float:
    """Fraction of expected heartbeats received since first seen, in [0, 1]."""
    expected = max(1.0, (now - first_seen) / interval)
    return min(1.0, heartbeats / expected)


class PeerRow(TypedDict):
    """One row of the registry's `peers` table, as the registry reads it."""

    id: bytes
    address: str
    capacity: int
    free: int
    used: int
    heartbeat_interval: float
    first_seen: float
    last_seen: float
    heartbeats: int
    suspended: int
    audits_ok: int
    audits_failed: int
    ok_w: float
    fail_w: float
    rep_at: float


@dataclass
class PeerView:
    """A peer row with its derived, time-dependent values."""

    row: PeerRow
    alive: bool
    uptime: float
    reputation: float
    eligible: bool
    disqualified: bool  # suspended, or failed too many audits: its data should be moved away
    offline_for: float  # seconds since its last heartbeat if not alive, else 0
    member: bool  # counts for where mutable slots live: not disqualified, not silent past membership_grace


def judge_peer(row: PeerRow, now: float, limits: CoordinatorLimits, open_failures: float = 0.0) -> PeerView:
    """What a peer row (the registry's columns) means at time `now` under `limits`.

    `open_failures` is the summed weight of reporters whose latest report on
    this peer had failures (kept by the registry, in memory): at
    `limits.open_failure_weight` or more the peer is disqualified, whatever
    its score, until those reporters' own later audits pass.
    """
    lim = limits
    interval = row["heartbeat_interval"]
    alive = now - row["last_seen"] <= lim.alive_intervals * interval
    uptime = uptime_fraction(row["heartbeats"], row["first_seen"], interval, now)
    ok_w, fail_w = decay_audit_weights(row["ok_w"], row["fail_w"], now - row["rep_at"])
    reputation = reputation_score(ok_w, fail_w)
    audits = row["audits_ok"] + row["audits_failed"]
    judged_uptime = (now - row["first_seen"]) / interval >= lim.uptime_grace_heartbeats
    # Low uptime only stops new placements: a flaky peer still holds what it has,
    # whereas a suspended or cheating one cannot be trusted with it.
    disqualified = (
        bool(row["suspended"])
        or open_failures >= lim.open_failure_weight
        or (audits >= lim.reputation_min_audits and reputation < lim.reputation_floor)
    )
    eligible = alive and not disqualified and not (judged_uptime and uptime < lim.uptime_floor)
    # Computed here rather than sending last_seen, so client clock skew cannot
    # make a peer look lost (or fresh); clamped in case our clock stepped back.
    offline_for = 0.0 if alive else max(0.0, now - row["last_seen"])
    member = not disqualified and offline_for < lim.membership_grace
    return PeerView(row, alive, uptime, reputation, eligible, disqualified, offline_for, member)
