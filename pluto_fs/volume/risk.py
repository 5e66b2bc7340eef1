"""What `pluto status` calls "at risk", decided in one place.

`risk` is one line for people ("none" when nothing is at risk); `at_risk` in
`--json` is exactly `risk != "none"`. Before, the two were computed apart and
could disagree (`"at_risk": false` next to `"risk": "unreadable…"` when the
coordinator was down). Data only on this machine is a risk too: losing the
machine loses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pluto_fs.writeback.journal_state import LocalChanges


@dataclass(frozen=True)
class PeerCounts:
    """How the coordinator sees the peers (None: it could not be asked)."""

    alive: int
    offline: int
    lost: int


def assess(peers: PeerCounts | None, k: int, n: int, grace_text: str, local: LocalChanges,
           local_problem: str | None = None) -> str:
    """The risk line: "none", or every reason data is at risk, most serious first, joined by "; "."""
    reasons: list[str] = []
    if peers is None:
        reasons.append("unknown: the coordinator did not answer, so whether your data is readable is unknown")
    elif peers.alive < k:
        reasons.append("unreadable: fewer peers than k are up")
    elif peers.offline or peers.lost:
        parts = []
        if peers.offline:
            parts.append(f"{peers.offline} peer(s) offline (their data still counts until {grace_text} "
                         "away, unless a pack is one loss from unreadable)")
        if peers.lost:
            parts.append(f"{peers.lost} peer(s) lost (what they held is rebuilt on other peers)")
        reasons.append("; ".join(parts) + f": data stays readable while at most {n - k} of each pack's {n} "
                       "are away")
    if local_problem:
        reasons.append(local_problem)
    elif not local.empty():
        reasons.append(f"{local.describe()} only on this machine")
    return "; ".join(reasons) or "none"


def at_risk(risk: str) -> bool:
    """The `at_risk` flag that goes with a risk line."""
    return risk != "none"
