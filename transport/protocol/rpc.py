"""Multiplexed CBOR RPC over a Noise channel.

One connection carries many concurrent requests in both directions. A
single reader task decodes incoming messages and routes them: requests to
handler tasks (bounded in number), responses and download pieces to the
waiting callers, upload pieces to the handler that is consuming them.
Streams have backpressure: the reader waits (with a timeout) for a slow
consumer, which in turn slows the TCP sender, so no side buffers a whole
fragment it did not ask to hold.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from transport.errors import ConnectionClosed, ProtocolError, RemoteError, RequestTimeout, TransportError
from transport.protocol import wire
from transport.protocol.limits import (
    CONCURRENT_REQUESTS_MAX,
    IDLE_CONNECTION_TIMEOUT,
    MESSAGE_MAX,
    REQUEST_TIMEOUT,
    STREAM_IDLE_TIMEOUT,
)
from transport.protocol.noise_channel import NoiseChannel
from transport.protocol.peer_id import peer_id_text

log = logging.getLogger(__name__)

_STREAM_BUFFER = 8  # pieces buffered per stream before backpressure applies


def _cbor_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type `major` with argument `n`."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return bytes((m | 24, n))
    if n < 0x10000:
        return bytes((m | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((m | 26,)) + n.to_bytes(4, "big")
    return bytes((m | 27,)) + n.to_bytes(8, "big")


def _piece_header(kind: int, call_id: int, length: int) -> bytes:
    """CBOR bytes of `[kind, call_id, <byte string of length>]` up to the data itself.

    Stream pieces are the bulk of the traffic; building their header by hand
    lets the data go out without `bytes(piece)` and `cbor2.dumps` copying it.
    The result is exactly what cbor2 would encode.
    """
    return b"\x83" + _cbor_head(0, kind) + _cbor_head(0, call_id) + _cbor_head(2, length)


def _read_head(buf: bytearray, pos: int, major: int) -> tuple[int, int] | None:
    """Argument and end of a definite-length CBOR head of type `major` at `pos`, or None."""
    if pos >= len(buf) or buf[pos] >> 5 != major:
        return None
    info = buf[pos] & 31
    if info < 24:
        return info, pos + 1
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None or pos + 1 + width > len(buf):
        return None
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "big"), pos + 1 + width


def _decode_piece(raw: bytearray) -> wire.Message | None:
    """Fast path for stream pieces: `[3|5, id, bytes]` exactly, with the data as a view (no copy).

    Accepts only that one precise shape, which wire.decode would accept too;
    anything else returns None and goes through the strict general decoder.
    """
    if len(raw) < 4 or raw[0] != 0x83 or raw[1] not in (wire.UP_DATA, wire.DOWN_DATA):
        return None
    head = _read_head(raw, 2, 0)
    if head is None or head[0] > wire.MAX_ID:
        return None
    call_id, pos = head
    head = _read_head(raw, pos, 2)
    if head is None or head[1] + head[0] != len(raw):
        return None
    return wire.Message(raw[1], call_id, data=memoryview(raw)[head[1] :])


@dataclass
class CallContext:
    """What a request handler knows about its caller, and its stream ends."""

    remote_key: bytes
    remote_address: str
    _conn: RpcConnection
    _id: int
    _upload: trio.MemoryReceiveChannel[memoryview | bytes] | None = None

    @property
    def remote_id(self) -> str:
        """The caller's peer id, text form."""
        return peer_id_text(self.remote_key)

    async def upload(self) -> AsyncIterator[bytes | memoryview]:
        """The pieces the caller streams after its request, until it says the end (may be memoryviews)."""
        if self._upload is None:
            raise RemoteError("bad_request", "this method takes no upload")
        chan = self._upload
        while True:
            try:  # the reader usually has the next piece buffered already: no timer needed
                piece = chan.receive_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(STREAM_IDLE_TIMEOUT) as scope:
                    try:
                        piece = await chan.receive()
                    except trio.EndOfChannel:
                        return
                if scope.cancelled_caught:
                    raise RemoteError("timeout", f"upload stalled for {STREAM_IDLE_TIMEOUT:g} s") from None
            except trio.EndOfChannel:
                return
            yield piece

    async def send_data(self, piece: bytes | memoryview) -> None:
        """Stream one piece of a download to the caller."""
        await self._conn._send_parts((_piece_header(wire.DOWN_DATA, self._id, len(piece)), piece))


Handler = Callable[[CallContext, str, wire.Map], Awaitable[Any]]
_Item = tuple[str, Any]  # ("data", piece) | ("result", value) | ("error", RemoteError), to a waiting caller


@dataclass
class _Pending:
    send: trio.MemorySendChannel[_Item]
    receive: trio.MemoryReceiveChannel[_Item]


@dataclass
class RpcConnection:
    """Both ends of the RPC protocol on one established channel.

    Run `serve()` in a nursery for the connection's lifetime; `call*` methods
    may be used from any task while it runs. `handler` answers the remote's
    requests; `upload_methods` names the methods that take an upload stream.
    """

    channel: NoiseChannel
    remote_address: str = ""
    handler: Handler | None = None
    upload_methods: frozenset[str] = frozenset()
    idle_timeout: float = math.inf
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _serving: dict[int, trio.MemorySendChannel[memoryview | bytes] | None] = field(default_factory=dict)
    last_active: float = -math.inf  # trio time of the last message received (-inf: none yet)
    _closed: bool = False
    _close_reason: str = ""
    _call_slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(CONCURRENT_REQUESTS_MAX))
    _done: trio.Event = field(default_factory=trio.Event)

    @property
    def remote_key(self) -> bytes:
        """The remote's authenticated static key."""
        return self.channel.remote_key

    @property
    def remote_id(self) -> str:
        """The remote's peer id, text form."""
        return peer_id_text(self.channel.remote_key)

    @property
    def closed(self) -> bool:
        """True once the connection can no longer be used."""
        return self._closed

    async def _send(self, payload: bytes) -> None:
        await self._send_parts((payload,))

    async def _send_parts(self, parts: tuple[bytes | memoryview, ...]) -> None:
        if self._closed:
            raise ConnectionClosed(self._close_reason or "connection closed")
        try:
            await self.channel.send_parts(parts)
        finally:
            if self.channel.broken:
                self._closed = True
                self._close_reason = "a send was interrupted half-way"
                await self.channel.aclose()

    # ---- running -----------------------------------------------------------

    async def serve(self) -> None:
        """Read and dispatch messages until the connection ends; then fail pending calls."""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._read_loop(nursery)
                except (ProtocolError, ConnectionClosed) as exc:
                    self._close_reason = str(exc)
                    if not self._closed:
                        log.info("connection %s closed: %s", self.remote_address or self.remote_id[:16], exc)
                self._closed = True
                nursery.cancel_scope.cancel()
        finally:
            self._closed = True
            for pending in list(self._pending.values()):
                pending.send.close()
            self._pending.clear()
            await self.channel.aclose()
            self._done.set()

    async def aclose(self) -> None:
        """Close the connection; pending calls fail with ConnectionClosed."""
        self._closed = True
        self._close_reason = self._close_reason or "connection closed locally"
        await self.channel.aclose()

    async def wait_closed(self) -> None:
        """Wait until `serve()` has finished."""
        await self._done.wait()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        # One cancel scope for the connection's life, its deadline pushed forward per
        # message: a fresh move_on_after per message costs more than the message itself.
        # Routing below waits at most STREAM_IDLE_TIMEOUT, well inside the idle limit.
        receive = self.channel.receive_message
        idle_timeout = self.idle_timeout
        timed = idle_timeout != math.inf
        with trio.CancelScope() as idle:
            while True:
                if timed:
                    idle.deadline = trio.current_time() + idle_timeout
                raw = await receive()
                self.last_active = trio.current_time()
                msg = _decode_piece(raw) or wire.decode(raw)
                kind = msg.kind
                if kind == wire.REQUEST:
                    self._start_request(nursery, msg)
                elif kind == wire.UP_DATA or kind == wire.UP_END:
                    await self._route_upload(msg)
                else:
                    await self._route_to_caller(msg)
        raise ConnectionClosed(f"idle for {idle_timeout:g} s")

    def _start_request(self, nursery: trio.Nursery, msg: wire.Message) -> None:
        if msg.id in self._serving:
            raise ProtocolError(f"request id {msg.id} reused while in flight")
        handler = self.handler
        if handler is None:
            raise ProtocolError("this endpoint does not take requests")
        if len(self._serving) >= CONCURRENT_REQUESTS_MAX:
            nursery.start_soon(self._send_quietly, wire.error(msg.id, "busy", "too many requests in flight; retry"))
            return
        upload_send = upload_recv = None
        if msg.method in self.upload_methods:
            upload_send, upload_recv = trio.open_memory_channel[bytes | memoryview](_STREAM_BUFFER)
        self._serving[msg.id] = upload_send
        ctx = CallContext(self.remote_key, self.remote_address, self, msg.id, upload_recv)
        nursery.start_soon(self._run_handler, handler, ctx, msg)

    async def _send_quietly(self, payload: bytes) -> None:
        try:
            await self._send(payload)
        except TransportError:
            pass

    async def _run_handler(self, handler: Handler, ctx: CallContext, msg: wire.Message) -> None:
        try:
            try:
                value = await handler(ctx, msg.method, msg.args)
                reply = wire.result(msg.id, value)
            except RemoteError as exc:
                reply = wire.error(msg.id, exc.code, exc.message)
            except (ConnectionClosed, trio.Cancelled):
                raise
            except Exception:
                log.exception("handler for %s failed", msg.method)
                reply = wire.error(msg.id, "internal", f"{msg.method} failed on the server; see its log")
            if len(reply) > MESSAGE_MAX:
                log.error("answer to %s is %d bytes, over the message limit", msg.method, len(reply))
                reply = wire.error(msg.id, "internal", f"the answer to {msg.method} is too large to send")
            await self._send_quietly(reply)
        except TransportError:
            pass  # the connection is going down; serve() reports why
        finally:
            self._serving.pop(msg.id, None)
            if ctx._upload is not None:
                ctx._upload.close()

    async def _route_upload(self, msg: wire.Message) -> None:
        if msg.id not in self._serving:
            return  # the handler already finished (e.g. refused early): drop the rest
        chan = self._serving[msg.id]
        if chan is None:
            raise ProtocolError(f"request {msg.id} takes no upload")
        if msg.kind == wire.UP_END:
            chan.close()
            return
        try:  # usually the stream buffer has room: no timer, no scheduler round
            chan.send_nowait(msg.data)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # handler stopped reading: the upload is being refused
        with trio.move_on_after(STREAM_IDLE_TIMEOUT) as scope:
            try:
                await chan.send(msg.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # handler stopped reading: the upload is being refused
        if scope.cancelled_caught:
            raise ProtocolError("upload consumer stalled")

    async def _route_to_caller(self, msg: wire.Message) -> None:
        pending = self._pending.get(msg.id)
        if pending is None:
            return  # a late answer to a call that timed out or was cancelled
        if msg.kind == wire.DOWN_DATA:
            item: tuple[str, Any] = ("data", msg.data)
        elif msg.kind == wire.RESULT:
            item = ("result", msg.args)
        else:
            item = ("error", RemoteError(msg.code, msg.text))
        try:  # a final answer always fits (the caller reads nothing else); a piece usually does
            pending.send.send_nowait(item)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        with trio.move_on_after(STREAM_IDLE_TIMEOUT):
            try:
                await pending.send.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    # ---- calling -----------------------------------------------------------

    def _open_call(self, buffer: int) -> tuple[int, _Pending]:
        if self._closed:
            raise ConnectionClosed(self._close_reason or "connection closed")
        call_id = next(self._ids)
        send, receive = trio.open_memory_channel[_Item](buffer)
        pending = _Pending(send, receive)
        self._pending[call_id] = pending
        return call_id, pending

    def _close_call(self, call_id: int) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            pending.receive.close()

    async def _next_item(self, pending: _Pending) -> tuple[str, Any]:
        try:
            return await pending.receive.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(self._close_reason or "connection closed before the answer") from None

    async def _acquire_slot(self) -> None:
        """Take one of the connection's call slots; no scheduler round when one is free."""
        try:
            self._call_slots.acquire_nowait()
        except trio.WouldBlock:
            await self._call_slots.acquire()

    async def call(self, method: str, args: wire.Map | None = None, timeout: float = REQUEST_TIMEOUT) -> Any:
        """Send a request and wait for its result; RemoteError if the remote refused it.

        `timeout` bounds the whole call: waiting for a free slot, sending, and the answer.
        """
        with trio.move_on_after(timeout) as scope:
            await self._acquire_slot()
            try:
                call_id, pending = self._open_call(1)
                try:
                    await self._send(wire.request(call_id, method, args or {}))
                    kind, value = await self._next_item(pending)
                finally:
                    self._close_call(call_id)
            finally:
                self._call_slots.release()
        if scope.cancelled_caught:
            raise RequestTimeout(f"{method}: no progress within {timeout:g} s")
        return self._final(method, kind, value)

    async def call_upload(
        self, method: str, args: wire.Map, pieces: Iterable[bytes | memoryview], timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        """Send a request followed by a stream of pieces; wait for the result.

        `timeout` bounds each step (the request, each piece, the answer), so a
        large healthy upload never times out while a stalled one does. An
        early refusal (e.g. over quota) stops the upload at once.
        """
        # One scope for the whole call, its deadline moved forward at every step.
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            await self._acquire_slot()
            try:
                call_id, pending = self._open_call(1)
                try:
                    scope.deadline = trio.current_time() + timeout
                    await self._send(wire.request(call_id, method, args))
                    answered = pending.receive.statistics
                    for piece in pieces:
                        if answered().current_buffer_used:
                            break  # the remote already answered: stop sending
                        scope.deadline = trio.current_time() + timeout
                        await self._send_parts((_piece_header(wire.UP_DATA, call_id, len(piece)), piece))
                    else:
                        scope.deadline = trio.current_time() + timeout
                        await self._send(wire.encode([wire.UP_END, call_id]))
                    scope.deadline = trio.current_time() + timeout
                    kind, value = await self._next_item(pending)
                finally:
                    self._close_call(call_id)
            finally:
                self._call_slots.release()
        if scope.cancelled_caught:
            raise RequestTimeout(f"{method}: no progress within {timeout:g} s")
        return self._final(method, kind, value)

    async def call_download(
        self,
        method: str,
        args: wire.Map,
        on_piece: Callable[[bytes | memoryview], Any],
        timeout: float = REQUEST_TIMEOUT,
    ) -> Any:
        """Send a request, hand each streamed piece to `on_piece`, return the final result.

        `timeout` bounds each step (the request, the gap before each piece),
        not the whole transfer, so a large healthy download never times out
        while a stalled one does. Pieces may arrive as memoryviews.
        """
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            await self._acquire_slot()
            try:
                call_id, pending = self._open_call(_STREAM_BUFFER)
                try:
                    scope.deadline = trio.current_time() + timeout
                    await self._send(wire.request(call_id, method, args))
                    while True:
                        scope.deadline = trio.current_time() + timeout
                        kind, value = await self._next_item(pending)
                        if kind != "data":
                            break
                        on_piece(value)
                finally:
                    self._close_call(call_id)
            finally:
                self._call_slots.release()
        if scope.cancelled_caught:
            raise RequestTimeout(f"{method}: no progress within {timeout:g} s")
        return self._final(method, kind, value)

    @staticmethod
    def _final(method: str, kind: str, value: Any) -> Any:
        if kind == "error":
            raise value
        if kind != "result":
            raise ProtocolError(f"{method} answered with an unexpected stream")
        return value


def server_connection(
    channel: NoiseChannel, address: str, handler: Handler, upload_methods: frozenset[str]
) -> RpcConnection:
    """An RpcConnection for an accepted client, closed when idle for too long."""
    return RpcConnection(
        channel, address, handler=handler, upload_methods=upload_methods, idle_timeout=IDLE_CONNECTION_TIMEOUT
    )
