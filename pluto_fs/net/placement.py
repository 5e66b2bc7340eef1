"""Where things live: rendezvous hashing of slots onto peers.

A mutable slot (a directory, a pack record) is replicated on the R peers
that rank highest for it under rendezvous (highest-random-weight) hashing of
(slot key, peer id). Any client that knows the slot key and the list of
peers computes the same R peers — no index has to say where a slot is, which
is what lets `pluto restore` find the root with nothing but the 24 words.
When a peer leaves, only the slots it ranked high for move (to the next peer
in their ranking), and readers look a few places further down the ranking.
"""

from __future__ import annotations

from collections.abc import Iterable

import blake3

_DOMAIN = b"pluto/placement/v1"


def rank_peers(slot_key: bytes, peer_ids: Iterable[bytes]) -> list[bytes]:
    """All peers, best first, for `slot_key` (deterministic for a given set)."""
    return sorted(set(peer_ids), key=lambda pid: blake3.blake3(_DOMAIN + slot_key + pid).digest(), reverse=True)


def slot_replicas(slot_key: bytes, peer_ids: Iterable[bytes], replicas: int) -> list[bytes]:
    """The `replicas` peers that should hold slot `slot_key`."""
    return rank_peers(slot_key, peer_ids)[:replicas]
