"""The storage peer (`pluto serve`): donates disk space to the network.

It stores opaque fragments and signed slots for any authenticated client,
enforces capacity and per-client quotas, answers storage challenges, and
keeps itself registered with the coordinator through heartbeats. It never
sees plaintext: clients seal everything before it leaves their machine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from cryptree.slot import MAX_SLOT_PAYLOAD, SignedSlot
from transport.coordinator.client import CoordinatorClient
from transport.errors import RemoteError, TransportError
from transport.peer.fragment_store import FragmentStore, Reservation, Upload
from transport.peer.limits import UPLOAD_STEP, UPLOAD_STEP_DEADLINE
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
_EXCHANGE_ENTRIES_MAX = 4096  # clients' exchange figures kept before idle ones are forgotten


@dataclass
class _Exchange:
    """What this peer knows of one client's storage exchange (see `StoragePeer.admit_exchange`)."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    expires: float = -math.inf
    allowed: int = 0
    elsewhere: int = 0  # the coordinator's `used` less what this peer last reported for the client
    pending: int = 0  # announced bytes of this client's uploads admitted here and not finished


class StoragePeer(RpcService):
    """RPC methods of a storage peer over one FragmentStore."""

    UPLOAD_METHODS = frozenset({"put_fragment"})

    def __init__(self, store: FragmentStore, peer_id: str, upload_step_deadline: float = UPLOAD_STEP_DEADLINE) -> None:
        self.store = store
        self.peer_id = peer_id
        self.upload_step_deadline = upload_step_deadline
        self.coordinator: CoordinatorClient | None = None  # set while registered: enables the exchange check
        self.reported: dict[bytes, int] = {}  # client -> bytes this peer last told the coordinator it holds
        self._exchange: dict[bytes, _Exchange] = {}

    async def admit_exchange(self, client: bytes, size: int) -> bool:
        """Storage exchange: refuse a client that would exceed what it earned by offering space.

        Check and count are one step under a per-client lock, so concurrent
        uploads of one client cannot all pass on the same figure: the client
        is charged its bytes elsewhere (the coordinator's figure, cached
        ALLOWANCE_TTL, less what this peer reported for it), its bytes here
        (live), and the announced size of its uploads still in flight here.
        Returns True if `size` was counted as pending; the caller must then
        call `exchange_done` once the upload ends, stored or not.
        An unreachable coordinator does not stop storage (the per-client
        quota still applies): failing closed would turn a coordinator outage
        into a network-wide write outage.
        """
        if self.coordinator is None:
            return False
        if len(self._exchange) > _EXCHANGE_ENTRIES_MAX:
            self._forget_idle_exchanges()
        state = self._exchange.setdefault(client, _Exchange())
        async with state.lock:
            now = trio.current_time()
            if state.expires < now:
                try:
                    allowance = await self.coordinator.allowance(client)
                except TransportError as exc:
                    log.info("exchange check skipped, coordinator unreachable: %s", exc)
                    return False
                state.expires = now + ALLOWANCE_TTL
                state.allowed = allowance.allowed
                state.elsewhere = allowance.used - self.reported.get(client, 0)
            used = max(0, state.elsewhere + self.store.usage(client).client_used) + state.pending
            if used + size > state.allowed:
                raise RemoteError(
                    "quota",
                    f"storage exchange: you store {used} of the {state.allowed} bytes you earned; "
                    "offer more space with `pluto serve --owner <your device id>` or delete files",
                )
            state.pending += size
            return True

    def exchange_done(self, client: bytes, size: int) -> None:
        """An upload counted by `admit_exchange` ended; if it was stored, the store now counts it."""
        state = self._exchange.get(client)
        if state is not None:
            state.pending -= size

    def _forget_idle_exchanges(self) -> None:
        now = trio.current_time()
        for client, state in list(self._exchange.items()):
            if state.pending == 0 and state.expires < now and not state.lock.locked():
                del self._exchange[client]

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
        """Receive a fragment streamed after the request; keep it only if it matches its id.

        Space is held only for bytes that arrived (`FragmentStore.admit`),
        and the upload must deliver every UPLOAD_STEP bytes within
        `upload_step_deadline` seconds or it is cancelled and its space
        released: announcing 64 MiB and trickling a byte now and then holds
        next to nothing, and not for long.
        """
        frag_id = get_bytes(args, "id", size=32)
        size = get_int(args, "size", high=FRAGMENT_MAX)
        client = ctx.remote_key
        counted = self.store.has_fragment(frag_id) is None and await self.admit_exchange(client, size)
        try:
            reservation = self.store.admit(client, size)
            try:
                upload = self.store.open_upload()
                try:
                    await self._receive(ctx, upload, reservation, size)
                    new = await trio.to_thread.run_sync(self.store.commit_upload, upload, frag_id, size, client)
                finally:
                    upload.discard()
            finally:
                reservation.release()
        finally:
            if counted:
                self.exchange_done(client, size)
        return {"stored": True, "new": new}

    async def _receive(self, ctx: CallContext, upload: Upload, reservation: Reservation, size: int) -> None:
        """Stream the upload into `upload`, growing `reservation` by each piece, within the step deadlines."""
        received = 0
        mark = min(UPLOAD_STEP, size)  # bytes that must have arrived by the scope's deadline
        # Pieces are kept as the received objects and written with one writev per
        # batch in a worker thread: no copy into an assembly buffer.
        batch: list[bytes | memoryview] = []
        batched = 0
        with trio.CancelScope(deadline=trio.current_time() + self.upload_step_deadline) as scope:
            async for piece in ctx.upload():
                received += len(piece)
                if received > size:
                    raise RemoteError("bad_content", f"fragment is longer than the {size} bytes announced")
                reservation.grow(len(piece))
                if received >= mark:
                    scope.deadline = trio.current_time() + self.upload_step_deadline
                    mark = min(received + UPLOAD_STEP, size)
                batch.append(piece)
                batched += len(piece)
                if batched >= _WRITE_BATCH:
                    await trio.to_thread.run_sync(upload.write_pieces, batch)
                    batch, batched = [], 0
            if batch:
                await trio.to_thread.run_sync(upload.write_pieces, batch)
        if scope.cancelled_caught:
            raise RemoteError(
                "timeout",
                f"upload too slow: {received} of {size} bytes, under {UPLOAD_STEP} "
                f"in {self.upload_step_deadline:g} s; cancelled",
            )

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
    upload_step_deadline: float = UPLOAD_STEP_DEADLINE  # see transport/peer/limits.py


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
                    peer.reported = dict(clients)
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
    peer = StoragePeer(store, peer_id, cfg.upload_step_deadline)
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
