"""Client side of the storage peer protocol: one typed method per RPC."""

from __future__ import annotations

from collections.abc import Iterator

import trio

from cryptree.merkle import merkle_root, verify_proof
from cryptree.slot import SignedSlot, SlotError
from transport.errors import ProtocolError, RemoteError
from transport.protocol.limits import FRAGMENT_MAX, REQUEST_TIMEOUT, STREAM_CHUNK
from transport.protocol.rpc import RpcConnection
from transport.protocol.wire import Map

_VERIFY_INLINE_MAX = 256 * 1024  # larger fragments are verified in a worker thread


def _pieces(data: bytes | memoryview) -> Iterator[memoryview]:
    view = memoryview(data)
    for off in range(0, len(view), STREAM_CHUNK):
        yield view[off : off + STREAM_CHUNK]


def _map(answer: object) -> Map:
    if not isinstance(answer, dict):
        raise ProtocolError("malformed peer answer: expected a map")
    return answer


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"malformed peer answer: {name} must be text")
    return value


class StoragePeerClient:
    """Talks to one storage peer over an established RpcConnection."""

    def __init__(self, conn: RpcConnection, timeout: float = REQUEST_TIMEOUT) -> None:
        self.conn = conn
        self.timeout = timeout

    async def ping(self) -> str:
        """The peer's id, as it reports it."""
        return _text(_map(await self.conn.call("ping", {}, self.timeout)).get("peer_id"), "peer_id")

    async def usage(self) -> Map:
        """Capacity, use and this client's quota on the peer."""
        return _map(await self.conn.call("usage", {}, self.timeout))

    async def put_fragment(self, frag_id: bytes, data: bytes | memoryview) -> bool:
        """Store a fragment whose id is its Merkle root; True if it was new on the peer."""
        res = await self.conn.call_upload(
            "put_fragment", {"id": frag_id, "size": len(data)}, _pieces(data), self.timeout
        )
        return bool(res.get("new")) if isinstance(res, dict) else False

    async def get_fragment(self, frag_id: bytes, verify: bool = True) -> bytes:
        """Fetch a fragment; with `verify`, a fragment that does not match its id is refused."""
        parts: list[bytes | memoryview] = []
        total = 0

        def take(piece: bytes | memoryview) -> None:
            nonlocal total
            total += len(piece)
            if total > FRAGMENT_MAX:
                raise ProtocolError("peer streamed more than a fragment can hold")
            parts.append(piece)

        await self.conn.call_download("get_fragment", {"id": frag_id}, take, self.timeout)
        data = b"".join(parts)
        # Hashing a large fragment on the event loop would stall every other transfer of this
        # client for milliseconds; from a worker thread the loop still runs between GIL switches.
        if verify and len(data) > _VERIFY_INLINE_MAX:
            root = await trio.to_thread.run_sync(merkle_root, data)
        else:
            root = merkle_root(data) if verify else frag_id
        if root != frag_id:
            raise RemoteError("corrupt", "peer returned a fragment that does not match its id")
        return data

    async def has_fragment(self, frag_id: bytes) -> bool:
        """Whether the peer says it holds the fragment (a claim, not a proof: see challenge)."""
        return bool((await self.conn.call("has_fragment", {"id": frag_id}, self.timeout))["present"])

    async def delete_fragment(self, frag_id: bytes) -> bool:
        """Release this client's claim on a fragment."""
        return bool((await self.conn.call("delete_fragment", {"id": frag_id}, self.timeout))["deleted"])

    async def challenge(self, frag_id: bytes, leaf: int, length: int) -> bool:
        """Ask for leaf `leaf` and its Merkle path; True only if it proves possession."""
        res = await self.conn.call("challenge", {"id": frag_id, "leaf": leaf}, self.timeout)
        if not isinstance(res, dict):
            return False
        leaf_bytes, path = res.get("leaf"), res.get("path")
        if not isinstance(leaf_bytes, bytes) or not isinstance(path, list):
            return False
        if not all(isinstance(p, bytes) for p in path):
            return False
        return verify_proof(frag_id, length, leaf, leaf_bytes, path)

    async def put_slot(self, slot: SignedSlot) -> None:
        """Store a signed slot version (the peer refuses stale or forged ones)."""
        await self.conn.call(
            "put_slot",
            {"writer": slot.writer, "seq": slot.seq, "payload": slot.payload, "signature": slot.signature},
            self.timeout,
        )

    async def get_slot(self, writer: bytes) -> SignedSlot | None:
        """The peer's latest version of a slot, verified; None if it has none."""
        try:
            res = await self.conn.call("get_slot", {"writer": writer}, self.timeout)
        except RemoteError as exc:
            if exc.code == "not_found":
                return None
            raise
        try:
            slot = SignedSlot(writer, res["seq"], res["payload"], res["signature"])
            slot.verify()
        except (KeyError, TypeError, SlotError) as exc:
            raise RemoteError("corrupt", f"peer returned a slot that does not verify: {exc}") from exc
        return slot
