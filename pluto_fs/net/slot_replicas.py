"""Replicated mutable slots on a fixed replica set: written to a majority of it, read from a majority.

Where: a slot lives on the R peers that rank highest for it (rendezvous
hashing, placement.py) among the network's *members*: peers that are alive
or offline for less than the repair grace (peer_states.py). The set does not
depend on who answers at the moment: a killed, frozen or rebooting peer keeps
its place and its vote. Only a peer gone for longer than the grace, or
disqualified, leaves the membership; its slots then move to the next peer in
the ranking (reads look there, and read repair copies them over).

Write: sent to all R; acknowledged once a majority (R // 2 + 1) stored it.
Below a majority it is not stored as far as anyone may rely on: the caller
gets NotEnoughPeers and keeps the change (the mount's journal retries it).
A replica holding another version with an equal or higher sequence number
means another writer got there first: ConflictError, and the caller merges
(folders, volume.py / folder_merge.py) or re-reads before trying again —
peers refuse an equal sequence number, so nobody may overwrite blindly.

Read: asks the R replicas, and the next R in the ranking (where a slot lives
that was written before the membership last changed). It settles once a
majority of the R answered, plus a short grace for the rest (quorum.py); with
fewer than a majority answering it fails (NotEnoughPeers) instead of passing
off an older version as the newest. Any two majorities of one set share a
peer, so a read sees every acknowledged write. Distinct versions that share
the highest sequence number (siblings: a write interrupted after reaching a
minority, next to a concurrent one that reached a majority) are all
returned; folders merge them, and the next write supersedes them. Replicas
that answered with an older version, or none, are given the newest (read
repair): that is how slots follow peers that were away, wiped, or replaced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import trio

from cryptree.slot import SignedSlot
from pluto_fs.errors import ConflictError, NotEnoughPeers
from pluto_fs.net.network import Network
from pluto_fs.net.placement import rank_peers
from pluto_fs.net.quorum import run_until_enough
from transport.errors import RemoteError, TransportError

log = logging.getLogger(__name__)

READ_REPAIR_TIMEOUT = 5.0  # seconds a read waits at most for bringing stale replicas up to date


def majority(replicas: int) -> int:
    """How many of `replicas` must store a write (and answer a read) so any two such groups meet."""
    return replicas // 2 + 1


@dataclass
class SlotReplicas:
    """Reads and writes slots on their fixed replica sets."""

    net: Network
    replicas: int = 5
    grace: float = 72 * 3600.0  # a peer silent longer than this leaves the membership (config repair_grace)

    async def placement(self, writer: bytes) -> tuple[list[bytes], list[bytes]]:
        """(the slot's replica set, the next peers in its ranking) over the current membership."""
        ranked = rank_peers(writer, await self.net.members(self.grace))
        return ranked[: self.replicas], ranked[self.replicas : 2 * self.replicas]

    async def read_versions(self, writer: bytes) -> list[SignedSlot]:
        """Every distinct version with the highest sequence number held by the slot's replicas.

        Empty if a majority of the replicas answered and none holds the slot.
        NotEnoughPeers when fewer than a majority answered: "empty" or "old"
        is never confused with "unreachable".
        """
        primary, extra = await self.placement(writer)
        if not primary:
            raise NotEnoughPeers("no storage peer is known to the coordinator; check that peers are running "
                                 "(`pluto peers`)")
        need = majority(len(primary))
        answers: dict[bytes, SignedSlot | None] = {}
        heard = 0
        members = set(primary)

        async def ask(peer_id: bytes) -> None:
            nonlocal heard
            try:
                slot = await (await self.net.client(peer_id)).get_slot(writer)
            except (TransportError, NotEnoughPeers) as exc:
                log.debug("slot read from a peer failed: %s", exc)
                return
            answers[peer_id] = slot
            if peer_id in members:
                heard += 1

        await run_until_enough([partial(ask, p) for p in primary + extra], lambda: heard >= need)
        if heard < need:
            raise NotEnoughPeers(
                f"only {heard} of the {len(primary)} peers holding this folder or record answered ({need} needed); "
                "bring peers back (`pluto peers`) or try again"
            )
        held = [s for s in answers.values() if s is not None]
        if not held:
            return []
        top = max(s.seq for s in held)
        newest = sorted({s.signature: s for s in held if s.seq == top}.values(), key=lambda s: s.signature)
        behind = [p for p in primary if p in answers and (answers[p] is None or answers[p].seq < top)]  # type: ignore[union-attr]
        if behind:
            await self._bring_up_to_date(newest[0], behind)
        return newest

    async def read(self, writer: bytes) -> SignedSlot | None:
        """The newest version of the slot (one of them, always the same, if there are siblings), or None."""
        found = await self.read_versions(writer)
        return found[0] if found else None

    async def repair(self, writer: bytes) -> bool:
        """Read the slot, which rewrites it to replicas that lack its newest version; False if it is nowhere."""
        return bool(await self.read_versions(writer))

    async def _bring_up_to_date(self, slot: SignedSlot, peers: list[bytes]) -> None:
        """Read repair: give `slot` to replicas that answered with less (best effort, bounded)."""

        async def put(peer_id: bytes) -> None:
            try:
                await (await self.net.client(peer_id)).put_slot(slot)
            except (TransportError, NotEnoughPeers) as exc:
                log.debug("read repair of a slot on a peer failed: %s", exc)

        with trio.move_on_after(READ_REPAIR_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for peer_id in peers:
                    nursery.start_soon(put, peer_id)

    async def write(self, slot: SignedSlot) -> int:
        """Store `slot` on its replica set; return how many replicas hold it.

        NotEnoughPeers below a majority; ConflictError when a replica already
        holds another version with an equal or higher sequence number.
        """
        targets, _ = await self.placement(slot.writer)
        if not targets:
            raise NotEnoughPeers("no storage peer is known to the coordinator; check that peers are running "
                                 "(`pluto peers`)")
        need = majority(len(targets))
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
                    elif held is not None and held.seq >= slot.seq:
                        newer.append(held.seq)
                    return
                log.debug("slot write refused by a peer: %s", exc)
            except (TransportError, NotEnoughPeers) as exc:
                log.debug("slot write to a peer failed: %s", exc)

        await run_until_enough([partial(put, p) for p in targets], lambda: stored >= need)
        if newer:
            raise ConflictError(
                f"another writer changed it meanwhile (version {max(newer)} is stored, this was {slot.seq})"
            )
        if stored < need:
            raise NotEnoughPeers(
                f"only {stored} of the {len(targets)} peers holding this folder or record stored the update "
                f"({need} needed); it is kept and retried — check `pluto peers`"
            )
        return stored


async def _quiet_get(client, writer: bytes) -> SignedSlot | None:
    try:
        return await client.get_slot(writer)
    except TransportError:
        return None
