"""Repair of one pack: rebuild fragment columns from any k and give each a peer of its own.

Rules (docs/TRUST.md, "Repair"):

- A column may go to any alive peer that holds no *other placed* column of
  the pack (placed = every column not being rebuilt that names a peer,
  offline ones included). Two columns are never on one peer.
- Spare peers offered by the coordinator (`find_peers`) come first. A column
  nobody was offered for goes back to the peer that held it, when the
  coordinator lists that peer alive and not disqualified: `find_peers` may
  leave out a peer whose audits just failed, and a wiped peer that came back
  with its key must be able to get its column back (on a grid of n peers it
  is the only place left). A peer whose audits keep failing is disqualified
  by the coordinator and gets nothing.
- Fragments are read from the columns the audit proved healthy only,
  verified, rebuilt and checked against their ids before they leave.
- A column whose peer could not be found, reached or finish the upload
  stays as the record had it, with the reason in `RepairResult.unplaced`;
  the pack counts as repaired only when every planned column was placed.
- The record is re-signed (seq + 1) only when a column moved. Repairs in one
  process take `PackStore.record_lock` and start from the newest record, so
  a column another repair placed since the audit is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from cryptree.packrecord import pack_write_cap
from pluto_fs.errors import NotEnoughPeers, PlutoError
from pluto_fs.store.packs import LayoutError, rebuild_fragments
from transport.errors import TransportError
from transport.protocol.peer_id import peer_id_text

if TYPE_CHECKING:
    from pluto_fs.volume.health import PackHealth
    from pluto_fs.volume.volume import Volume

NO_PEER = "no peer to put it on: every other alive, eligible peer already holds a column of this pack"


@dataclass
class RepairResult:
    """What a repair of one pack did."""

    rebuilt: int = 0  # fragments rebuilt and acknowledged by their peer
    placed: list[int] = field(default_factory=list)  # columns now on a peer (new, or the one that lost it)
    unplaced: dict[int, str] = field(default_factory=dict)  # column -> why it is still not placed

    @property
    def complete(self) -> bool:
        """Every planned column was placed."""
        return not self.unplaced


def _short_id(peer: bytes) -> str:
    return peer_id_text(peer)[:12]


async def repair_pack(volume: Volume, health: PackHealth, columns: list[int]) -> RepairResult:
    """Rebuild `columns` of the audited pack `health` and place each on a peer of its own.

    Raises NotEnoughPeers when fewer than k columns are healthy (nothing can
    be rebuilt) and PlutoError for a pack of another user (only the owner
    can sign its record); every other shortfall is in the result.
    """
    packs, net, layout = volume.packs, volume.net, health.layout
    if pack_write_cap(volume.keys.pack_key, health.nonce).writer != health.record.writer:
        raise PlutoError("this pack belongs to another user; only its owner can repair it")
    async with packs.record_lock:
        seq, _, peers = await packs.fetch_record(health.record)
        # A column another repair moved since the audit is not ours to touch any more.
        columns = [c for c in columns if peers[c] == health.peers[c]]
        good = [c for c in range(layout.n) if health.healthy[c] and peers[c] == health.peers[c]]
        if not columns:
            return RepairResult()
        if len(good) < layout.k:
            raise NotEnoughPeers(f"a pack has only {len(good)} healthy fragments of the {layout.k} needed; "
                                 "it cannot be rebuilt now")
        assign = await _choose_peers(volume, peers, columns)
        result = RepairResult(unplaced={c: NO_PEER for c in columns if c not in assign})
        clients = {}
        for col, peer in assign.items():
            try:
                clients[col] = await net.client(peer)
            except (TransportError, NotEnoughPeers) as exc:
                result.unplaced[col] = f"could not reach peer {_short_id(peer)}: {exc}"
        for index in range(len(layout.segments)):
            if not clients:
                break
            # One download of k fragments per segment serves every column rebuilt, so
            # rebuilding m columns costs k + m fragment transfers, not m * (k + 1).
            try:
                frags = await packs.gather(layout, peers, index, good)
            except NotEnoughPeers as exc:
                for col in clients:
                    result.unplaced[col] = f"could not read the pack to rebuild it: {exc}"
                clients = {}
                break
            wanted = sorted(clients)
            try:
                fresh = await trio.to_thread.run_sync(rebuild_fragments, layout, index, frags, wanted)
            except LayoutError as exc:  # never hand a peer a fragment that is not the lost one
                for col in clients:
                    result.unplaced[col] = f"the rebuilt fragments do not match the pack record: {exc}"
                clients = {}
                break
            result.rebuilt += await _put_all(volume, clients, assign, layout.segments[index].fragment_ids, fresh,
                                             result.unplaced)
        result.placed = sorted(clients)
        new_peers = list(peers)
        for col in result.placed:
            new_peers[col] = assign[col]
        if tuple(new_peers) != peers:
            await packs.publish_record(health.nonce, seq + 1, layout, tuple(new_peers))
        return result


async def _choose_peers(volume: Volume, peers: tuple[bytes | None, ...], columns: list[int]) -> dict[int, bytes]:
    """A distinct peer for as many of `columns` as possible: spares first, then each column's own former peer."""
    placed = {p for c, p in enumerate(peers) if c not in columns and p is not None}
    former = {c: peers[c] for c in columns if peers[c] is not None}
    records = await volume.net.peers()  # the audit just refreshed it; a few seconds old at most

    def usable(peer: bytes) -> bool:
        record = records.get(peer)
        return record is not None and record.alive and not record.disqualified and peer not in placed

    takes_back = {c for c, p in former.items() if usable(p)}
    # Columns that have no former peer to fall back on get the spares first.
    ordered = sorted(columns, key=lambda c: c in takes_back)
    exclude = placed | set(former.values())
    spares = await volume.net.find_peers(len(columns), exclude=list(exclude))
    assign = {col: spare.id for col, spare in zip(ordered, spares)}  # noqa: B905 (fewer spares than columns: fine)
    for col in takes_back - set(assign):
        assign[col] = former[col]
    return assign


async def _put_all(volume: Volume, clients: dict, assign: dict[int, bytes], ids: tuple[bytes, ...],
                   fresh: dict[int, bytes], unplaced: dict[int, str]) -> int:
    """Put one rebuilt fragment per column at once; a column whose put fails leaves `clients`."""
    stored = 0

    async def put(col: int) -> None:
        nonlocal stored
        try:
            await clients[col].put_fragment(ids[col], fresh[col])
        except (TransportError, NotEnoughPeers) as exc:
            unplaced[col] = f"upload to peer {_short_id(assign[col])} failed: {exc}"
            del clients[col]
            return
        volume.packs.stats.fragment_bytes_sent += len(fresh[col])
        stored += 1

    async with trio.open_nursery() as nursery:
        for col in list(clients):
            nursery.start_soon(put, col)
    return stored
