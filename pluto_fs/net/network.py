"""The client's view of the network: the coordinator, the peer list, storage clients."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from pluto_fs.errors import NotEnoughPeers
from pluto_fs.net.peer_states import PeerState, peer_state
from transport.coordinator.client import CoordinatorClient, FoundPeer, PeerRecord
from transport.errors import TransportError
from transport.peer.client import StoragePeerClient
from transport.protocol.pool import PeerPool

log = logging.getLogger(__name__)


@dataclass
class Network:
    """Peers as the coordinator lists them, and connections to them through one pool."""

    pool: PeerPool
    coordinator_address: str
    timeout: float = 10.0
    peer_list_ttl: float = 5.0
    _peers: dict[bytes, PeerRecord] = field(default_factory=dict)
    _fetched_at: float = -1e9
    _refresh_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def coordinator(self) -> CoordinatorClient:
        """Typed client of the coordinator."""
        return CoordinatorClient.from_pool(self.pool, self.coordinator_address, timeout=self.timeout)

    async def peers(self, refresh: bool = False) -> dict[bytes, PeerRecord]:
        """Every peer the coordinator knows, by id (cached for a few seconds)."""
        async with self._refresh_lock:
            if refresh or trio.current_time() - self._fetched_at > self.peer_list_ttl:
                try:
                    records = await self.coordinator.list_peers()
                except TransportError as exc:
                    if not self._peers:
                        raise NotEnoughPeers(
                            f"cannot reach the coordinator at {self.coordinator_address} ({exc}); is it running?"
                        ) from exc
                    log.warning("coordinator unreachable (%s); using the last peer list", exc)
                else:
                    self._peers = {r.id: r for r in records}
                    self._fetched_at = trio.current_time()
            return self._peers

    async def members(self, grace: float) -> list[bytes]:
        """Peers that belong to the network, as the coordinator says (the same for every device);
        from a coordinator too old to say: alive, or offline for less than `grace` seconds.

        Where mutable slots live is ranked over these, never over who happens
        to answer right now: a reboot or a freeze must not move a folder's
        replica set (see SlotReplicas).
        """
        return [pid for pid, r in (await self.peers()).items()
                if (r.member if r.member is not None else peer_state(r, grace) is not PeerState.LOST)]

    def listed_offline(self) -> set[bytes]:
        """Peers the last fetched peer list shows as not alive (no network call)."""
        return {pid for pid, r in self._peers.items() if not r.alive}

    async def client(self, peer_id: bytes) -> StoragePeerClient:
        """A storage client for `peer_id`, connected and pinned to its key."""
        record = (await self.peers()).get(peer_id)
        if record is None:
            record = (await self.peers(refresh=True)).get(peer_id)
        if record is None:
            raise NotEnoughPeers("a peer holding this data is unknown to the coordinator")
        try:
            conn = await self.pool.get(record.address, peer_id)
        except TransportError:
            # It may have come back on another address: look again once.
            fresh = (await self.peers(refresh=True)).get(peer_id)
            if fresh is None or fresh.address == record.address:
                raise
            conn = await self.pool.get(fresh.address, peer_id)
        return StoragePeerClient(conn, self.timeout)

    async def find_peers(self, n: int, exclude: list[bytes] | tuple = ()) -> list[FoundPeer]:
        """Up to `n` peers offered for placement."""
        try:
            return await self.coordinator.find_peers(n, exclude)
        except TransportError as exc:
            raise NotEnoughPeers(f"cannot reach the coordinator at {self.coordinator_address} ({exc})") from exc
