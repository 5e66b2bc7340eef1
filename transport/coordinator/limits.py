"""The coordinator's limits: the registry, the directory and the mailboxes all read them from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoordinatorLimits:
    """Every bound a stranger could push against, in one place."""

    min_heartbeat_interval: float = 0.1  # shorter would only make peers look dead
    alive_intervals: float = 3.0  # alive = last heartbeat within this many intervals
    peers_max: int = 100_000
    forget_peer_after: float = 30 * 86400.0  # a peer silent this long is dropped from the registry
    users_max: int = 1_000_000
    claim_skew: int = 600  # seconds a claim's timestamp may differ from our clock
    mailbox_blobs_max: int = 256
    mailbox_blob_size: int = 1024
    mailbox_rate: int = 30  # deposits per mailbox per window
    mailbox_rate_window: float = 60.0
    mailbox_total_max: int = 1_000_000  # all mailboxes together: ~1 GiB of blobs at most
    challenge_ttl: float = 60.0
    audit_report_interval: float = 10.0  # clean reports per reporter per peer: one counts per interval
    # A reporter counts fully once the audited peer reports storing this much for it (less: in
    # proportion; nothing: not at all). See reputation.reporter_weight.
    audit_full_weight_bytes: int = 1 << 20
    # Reporters whose latest report on a peer had failures, summed by weight: this much disqualifies.
    open_failure_weight: float = 0.5
    # ...until those reporters' own later audits pass, or this long: clients do not audit a
    # disqualified peer, so without an end a failure would outlast any repair of the peer.
    open_failure_hold: float = 86400.0
    find_peers_max: int = 256
    exclude_max: int = 1024
    list_peers_max: int = 10_000  # keeps the answer far below the RPC message limit
    reputation_floor: float = 0.25  # below this (with enough audits) a peer is not offered
    reputation_min_audits: int = 3
    uptime_floor: float = 0.5
    # A peer silent longer than this leaves the network's membership: mutable slots (folders,
    # pack records) stop counting on it and move to the next peers in their ranking. Every client
    # takes membership from here, so all of a user's devices agree on where a slot lives.
    membership_grace: float = 72 * 3600.0
    uptime_grace_heartbeats: float = 100.0  # judge uptime only after this many expected heartbeats
    maintenance_every: float = 60.0
    exchange_grace: int = 1 << 30  # raw bytes a client may store before offering any space itself
    usage_report_max: int = 10_000  # clients one heartbeat may report usage for
