"""The storage peer (`pluto serve`): donates disk space to the network.

It stores opaque fragments and signed slots for any authenticated client,
enforces capacity and per-client quotas, answers storage challenges, and
keeps itself registered with the coordinator through heartbeats. It never
sees plaintext: clients seal everything before it leaves their machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from cryptree.slot import MAX_SLOT_PAYLOAD, SignedSlot
from transport.coordinator.client import CoordinatorClient
from transport.errors import RemoteError, TransportError
from transport.peer.fragment_store import FragmentStore
from transport.protocol.args import get_bytes, get_int
from transport.protocol.keys import load_or_create_key
from transport.protocol.limits import FRAGMENT_MAX, HANDSHAKE_TIMEOUT, STREAM_CHUNK
from transport.protocol.peer_id import peer_id_text
from transport.protocol.pool import open_pool
from transport.protocol.rpc import CallContext
from transport.protocol.server import RpcService, serve_rpc
from transport.protocol.wire import Map

log = logging.getLogger(__name__)

_WRITE_BATCH = 1 << 20  # bytes gathered before one writev in a worker thread (amortises the thread hop)
ALLOWANCE_TTL = 5.0  # seconds a client's exchange figures from the coordinator are trusted


class StoragePeer(RpcService):
    """RPC methods of a storage peer over one FragmentStore."""

    UPLOAD_METHODS = frozenset({"put_fragment"})

    def __init__(self, store: FragmentStore, peer_id: str) -> None:
        self.store = store
        self.peer_id = peer_id
        self.coordinator: CoordinatorClient | None = None  # set while registered: enables the exchange check
        self._allowances: dict[bytes, tuple[float, int, int]] = {}  # client -> (expires, allowed, used)

    async def check_exchange(self, client: bytes, size: int) -> None:
        """Storage exchange: refuse a client that would exceed what it earned by offering space.

        The coordinator's figures lag by a heartbeat, so bytes accepted here
        since the last answer are added. An unreachable coordinator does not
        stop storage (the per-client quota still applies): failing closed
        would turn a coordinator outage into a network-wide write outage.
        """
        if self.coordinator is None:
            return
        now = trio.current_time()
        cached = self._allowances.get(client)
        if cached is None or cached[0] < now:
            try:
                allowance = await self.coordinator.allowance(client)
            except TransportError as exc:
                log.info("exchange check skipped, coordinator unreachable: %s", exc)
                return
            cached = (now + ALLOWANCE_TTL, allowance.allowed, allowance.used)
        expires, allowed, used = cached
        if used + size > allowed:
            raise RemoteError(
                "quota",
                f"storage exchange: you store {used} of the {allowed} bytes you earned; "
                "offer more space with `pluto serve --owner <your device id>` or delete files",
            )
        self._allowances[client] = (expires, allowed, used + size)

    async def rpc_ping(self, ctx: CallContext, args: Map) -> Map:
        """Liveness check; returns this peer's id."""
        return {"peer_id": self.peer_id}

    async def rpc_usage(self, ctx: CallContext, args: Map) -> Map:
        """Capacity, use, and the caller's own quota and use."""
        use = await trio.to_thread.run_sync(self.store.usage, ctx.remote_key)
        return {
            "capacity": use.capacity,
            "used": use.used,
            "free": use.free,
            "client_used": use.client_used,
            "client_quota": use.client_quota,
        }

    async def rpc_put_fragment(self, ctx: CallContext, args: Map) -> Map:
        """Receive a fragment streamed after the request; keep it only if it matches its id."""
        frag_id = get_bytes(args, "id", size=32)
        size = get_int(args, "size", high=FRAGMENT_MAX)
        if self.store.has_fragment(frag_id) is None:
            await self.check_exchange(ctx.remote_key, size)
        self.store.reserve(ctx.remote_key, size)
        upload = self.store.open_upload()
        try:
            received = 0
            # Pieces are kept as the received objects and written with one writev per
            # batch in a worker thread: no copy into an assembly buffer.
            batch: list[bytes | memoryview] = []
            batched = 0
            async for piece in ctx.upload():
                received += len(piece)
                if received > size:
                    raise RemoteError("bad_content", f"fragment is longer than the {size} bytes announced")
                batch.append(piece)
                batched += len(piece)
                if batched >= _WRITE_BATCH:
                    await trio.to_thread.run_sync(upload.write_pieces, batch)
                    batch, batched = [], 0
            if batch:
                await trio.to_thread.run_sync(upload.write_pieces, batch)
            new = await trio.to_thread.run_sync(self.store.commit_upload, upload, frag_id, size, ctx.remote_key)
        finally:
            upload.discard()
            self.store.release(size)
        return {"stored": True, "new": new}

    async def rpc_get_fragment(self, ctx: CallContext, args: Map) -> Map:
        """Stream a fragment back in bounded pieces."""
        frag_id = get_bytes(args, "id", size=32)
        f, size = await trio.to_thread.run_sync(self.store.read_fragment_pieces, frag_id, STREAM_CHUNK)
        try:
            while block := await trio.to_thread.run_sync(f.read, _WRITE_BATCH):
                view = memoryview(block)
                for off in range(0, len(view), STREAM_CHUNK):
                    await ctx.send_data(view[off : off + STREAM_CHUNK])
        finally:
            f.close()
        return {"size": size}

    async def rpc_has_fragment(self, ctx: CallContext, args: Map) -> Map:
        """Whether a fragment is held, and its size."""
        frag_id = get_bytes(args, "id", size=32)
        size = await trio.to_thread.run_sync(self.store.has_fragment, frag_id)
        return {"present": size is not None, "size": size or 0}

    async def rpc_delete_fragment(self, ctx: CallContext, args: Map) -> Map:
        """Drop the caller's claim on a fragment; space comes back when nobody claims it."""
        frag_id = get_bytes(args, "id", size=32)
        dropped = await trio.to_thread.run_sync(self.store.delete_claim, frag_id, ctx.remote_key)
        return {"deleted": dropped}

    async def rpc_challenge(self, ctx: CallContext, args: Map) -> Map:
        """Storage challenge: leaf `index` of a fragment plus its Merkle path."""
        frag_id = get_bytes(args, "id", size=32)
        index = get_int(args, "leaf", high=FRAGMENT_MAX)
        leaf, path, size = await trio.to_thread.run_sync(self.store.challenge, frag_id, index)
        return {"leaf": leaf, "path": path, "size": size}

    async def rpc_put_slot(self, ctx: CallContext, args: Map) -> Map:
        """Store a signed slot version that is newer than the one held."""
        slot = SignedSlot(
            get_bytes(args, "writer", size=32),
            get_int(args, "seq"),
            get_bytes(args, "payload", max_size=MAX_SLOT_PAYLOAD),
            get_bytes(args, "signature", size=64),
        )
        await trio.to_thread.run_sync(self.store.put_slot, slot, ctx.remote_key)
        return {"stored": True}

    async def rpc_get_slot(self, ctx: CallContext, args: Map) -> Map:
        """The latest version of a slot."""
        writer = get_bytes(args, "writer", size=32)
        slot = await trio.to_thread.run_sync(self.store.get_slot, writer)
        if slot is None:
            raise RemoteError("not_found", "no such slot here")
        return {"seq": slot.seq, "payload": slot.payload, "signature": slot.signature}


@dataclass
class PeerConfig:
    """Everything `pluto serve` needs."""

    store_dir: Path
    capacity: int
    host: str
    port: int
    coordinator: str | None
    heartbeat_interval: float = 30.0
    advertise: str | None = None  # address others should dial, when it differs from host:port
    client_quota: int | None = None
    owner: bytes | None = None  # device key of the user this peer's capacity earns storage for
    handshake_timeout: float = HANDSHAKE_TIMEOUT


async def _coordinator_loop(
    cfg: PeerConfig, coordinator_address: str, peer: StoragePeer, key: bytes, address: str
) -> None:
    """Register, then heartbeat forever; on any failure wait and start over.

    The interval the coordinator answers with wins over ours: a peer that
    beats more slowly than the coordinator expects would look dead.
    """
    backoff = 1.0
    async with open_pool(key) as pool:
        coordinator = CoordinatorClient.from_pool(pool, coordinator_address)
        while True:
            try:
                use = peer.store.usage(b"")
                interval = await coordinator.register(
                    address, cfg.capacity, use.free, cfg.heartbeat_interval, owner=cfg.owner
                )
                log.info("registered with coordinator %s as %s", coordinator_address, address)
                peer.coordinator = coordinator
                backoff = 1.0
                while True:
                    await trio.sleep(interval)
                    use = peer.store.usage(b"")
                    clients = await trio.to_thread.run_sync(peer.store.client_usage)
                    interval = await coordinator.heartbeat(use.free, use.used, clients)
            except TransportError as exc:
                log.warning("coordinator %s: %s; retrying in %.0f s", coordinator_address, exc, backoff)
                await pool.forget(coordinator_address)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, max(cfg.heartbeat_interval, 1.0))


async def run_storage_peer(
    cfg: PeerConfig, *, task_status: trio.TaskStatus[tuple[str, str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Open the store, listen, register with the coordinator, serve until cancelled."""
    cfg.store_dir.mkdir(parents=True, exist_ok=True)
    private = load_or_create_key(cfg.store_dir / "peer.key")
    key = bytes(private)
    peer_id = peer_id_text(bytes(private.public_key))
    store = FragmentStore(cfg.store_dir, cfg.capacity, cfg.client_quota)
    peer = StoragePeer(store, peer_id)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(serve_rpc, handshake_timeout=cfg.handshake_timeout), peer, key, cfg.host, cfg.port
            )
            port = listeners[0].socket.getsockname()[1]
            address = cfg.advertise or f"{cfg.host}:{port}"
            if cfg.coordinator:
                nursery.start_soon(_coordinator_loop, cfg, cfg.coordinator, peer, key, address)
            task_status.started((peer_id, address))
    finally:
        store.close()
