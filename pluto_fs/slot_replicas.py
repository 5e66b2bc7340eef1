"""Replicated mutable slots: write to a majority of R peers, read the newest of R.

Slots are placed by rendezvous hashing (placement.py), so readers and writers
agree on the R peers without an index. A write succeeds once a majority of
those R peers stored it; a read asks all R in parallel and keeps the highest
sequence number whose signature verifies (a peer may serve an older, still
validly signed version). Once a majority has answered, the rest get a short
grace and no more (quorum.py): a frozen peer must not stall every folder. If none of the R holds the slot — the peer set has
changed since it was written — the next R in the ranking are asked too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import trio

from cryptree.slot import SignedSlot
from transport.errors import RemoteError, TransportError

from .errors import ConflictError, NotEnoughPeers
from .network import Network
from .placement import rank_peers
from .quorum import run_until_enough

log = logging.getLogger(__name__)


@dataclass
class SlotReplicas:
    """Reads and writes slots on the peers that rank highest for them."""

    net: Network
    replicas: int = 5

    def _quorum(self, targets: int) -> int:
        return min(targets, self.replicas // 2 + 1)

    async def _ranked(self, writer: bytes) -> list[bytes]:
        return rank_peers(writer, await self.net.usable_peer_ids())

    async def read(self, writer: bytes) -> SignedSlot | None:
        """The newest valid version of the slot at `writer`, or None if no peer holds one.

        NotEnoughPeers if no peer answered at all (so "empty" is never
        confused with "unreachable").
        """
        ranked = await self._ranked(writer)
        answered = 0
        for start in range(0, min(len(ranked), 3 * self.replicas), self.replicas):
            best: SignedSlot | None = None
            batch = ranked[start : start + self.replicas]
            heard = 0

            async def ask(peer_id: bytes) -> None:
                nonlocal answered, best, heard
                try:
                    slot = await (await self.net.client(peer_id)).get_slot(writer)
                except (TransportError, NotEnoughPeers) as exc:
                    log.info("slot read from a peer failed: %s", exc)
                    return
                answered += 1
                heard += 1
                if slot is not None and (best is None or slot.seq > best.seq):
                    best = slot

            quorum = self._quorum(len(batch))
            await run_until_enough([partial(ask, p) for p in batch], lambda: heard >= quorum)
            if best is not None:
                return best
        if answered == 0:
            raise NotEnoughPeers("no storage peer answered; check that peers are running (`pluto peers`)")
        return None

    async def write(self, slot: SignedSlot) -> int:
        """Store `slot` on its R peers; return how many hold it. NotEnoughPeers below a majority."""
        targets = (await self._ranked(slot.writer))[: self.replicas]
        stored = 0
        newer: list[int] = []

        async def put(peer_id: bytes) -> None:
            nonlocal stored
            try:
                client = await self.net.client(peer_id)
                await client.put_slot(slot)
                stored += 1
            except RemoteError as exc:
                if exc.code == "stale_seq":
                    held = await _quiet_get(client, slot.writer)
                    if held == slot:
                        stored += 1  # a retry of a write that already landed there
                    elif held is not None:
                        newer.append(held.seq)
                    return
                log.info("slot write refused by a peer: %s", exc)
            except (TransportError, NotEnoughPeers) as exc:
                log.info("slot write to a peer failed: %s", exc)

        quorum = self._quorum(len(targets))
        await run_until_enough([partial(put, p) for p in targets], lambda: stored >= quorum)
        if newer and stored < self._quorum(len(targets)):
            raise ConflictError(
                f"this folder was changed elsewhere (version {max(newer)} is newer than {slot.seq}); try again"
            )
        if stored < self._quorum(len(targets)) or not targets:
            raise NotEnoughPeers(
                f"only {stored} of {len(targets)} peers stored the update (need {self._quorum(len(targets))}); "
                "check `pluto peers`"
            )
        return stored


async def _quiet_get(client, writer: bytes) -> SignedSlot | None:
    try:
        return await client.get_slot(writer)
    except TransportError:
        return None
