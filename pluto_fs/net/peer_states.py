"""What a client makes of a storage peer from the coordinator's record: healthy, offline or lost.

One rule, used for repair (offline peers' fragments still count within the
grace), for status, and for slot membership (a folder's replica set is
ranked over the peers that are not lost, so it does not change when a peer
merely reboots or freezes).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from transport.coordinator.client import PeerRecord


class PeerState(StrEnum):
    """What a client makes of a storage peer when deciding on repair."""

    HEALTHY = "healthy"  # heartbeating: its fragments are audited and read
    OFFLINE = "offline"  # silent for less than the grace: its fragments still count, but are not asked for
    LOST = "lost"  # silent longer, unknown to the coordinator, or disqualified: rebuild what it held


def peer_state(record: PeerRecord | None, grace: float) -> PeerState:
    """Classify one peer from the coordinator's record of it, with a repair grace of `grace` seconds.

    A grace of 0 gives the rule without a grace period: anything not
    heartbeating is lost.
    """
    if record is None or record.disqualified:
        return PeerState.LOST
    if record.alive:
        return PeerState.HEALTHY
    # No offline_for (a coordinator that does not report it) means "silent for an unknown time":
    # treated as lost, the safe side, since the grace cannot be measured.
    if record.offline_for is not None and record.offline_for < grace:
        return PeerState.OFFLINE
    return PeerState.LOST


def peer_states(records: Mapping[bytes, PeerRecord], grace: float) -> dict[bytes, PeerState]:
    """`peer_state` for every peer the coordinator listed."""
    return {pid: peer_state(r, grace) for pid, r in records.items()}
