"""Mutually authenticated, encrypted channels: Noise_XX over a trio stream.

Wire format: every Noise message (handshake or transport) is preceded by a
2-byte big-endian length, as the Noise spec suggests. After the handshake the
channel carries length-prefixed application messages (4-byte length, then
that many bytes) split across as many Noise frames as needed.

The remote's static X25519 key, authenticated by the handshake, is its peer
id. Nothing is read from the remote before the handshake completes except
the handshake itself, whose messages are tiny and bounded.

Receiving is bounded in memory and in time: bytes are buffered only as they
arrive (an announced length is never preallocated), a server's channels
share one `BufferBudget` (over it, the channel holding the most is dropped),
and once the first byte of a message has arrived the rest must follow within
`MESSAGE_GRACE` plus its size at `MESSAGE_MIN_RATE`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import trio
from noise.connection import Keypair, NoiseConnection

from transport.errors import ConnectionClosed, HandshakeError, ProtocolError
from transport.protocol.limits import (
    FRAME_PLAINTEXT_MAX,
    HANDSHAKE_TIMEOUT,
    MESSAGE_GRACE,
    MESSAGE_MAX,
    MESSAGE_MIN_RATE,
    NOISE_FRAME_MAX,
)

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"pluto/1"
HANDSHAKE_MESSAGE_MAX = 256  # XX messages are at most 96 bytes plus empty payloads
_RECV_SIZE = 256 * 1024


class BufferBudget:
    """One bound on the received bytes that all channels of a server hold at once.

    Each channel reports what it buffers (ciphertext not yet decrypted plus
    plaintext not yet delivered as a message). When the total passes
    `limit`, the channel holding the most is dropped at once — its buffers
    freed, its `on_evict` called — rather than the newcomer refused, so one
    connection holding a huge unfinished message cannot starve the rest.
    `total` can pass `limit` by at most one receive (256 KiB) before that.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.peak = 0  # highest total left standing after evictions
        self.evictions = 0
        self._held: dict[NoiseChannel, int] = {}

    def update(self, channel: NoiseChannel, held: int) -> None:
        """Record that `channel` now buffers `held` bytes; drop the largest holder while over the limit."""
        self.total += held - self._held.pop(channel, 0)
        if held:
            self._held[channel] = held
        while self.total > self.limit and self._held:
            victim = max(self._held, key=self._held.__getitem__)
            self.total -= self._held.pop(victim)
            self.evictions += 1
            victim._evict(f"dropped: it held the most buffered bytes when all connections passed {self.limit} bytes")
        self.peak = max(self.peak, self.total)

    def release(self, channel: NoiseChannel) -> None:
        """Forget `channel` (closed)."""
        self.total -= self._held.pop(channel, 0)


class NoiseChannel:
    """An established Noise session over a trio stream."""

    def __init__(self, stream: trio.abc.Stream, noise: NoiseConnection, remote_key: bytes) -> None:
        self.stream = stream
        self.remote_key = remote_key
        self._enc = noise.noise_protocol.cipher_state_encrypt
        self._dec = noise.noise_protocol.cipher_state_decrypt
        self._raw = bytearray()  # ciphertext received but not yet decrypted
        self._plain = bytearray()  # decrypted bytes not yet returned as messages
        self._send_lock = trio.Lock()
        self._broken = False  # True if a send stopped half-way: the stream is out of sync
        self._budget: BufferBudget | None = None
        self._held = 0  # bytes reported to the budget
        self._dropped = ""  # why this channel takes no more bytes (dropped by the budget, or closed)
        self._evicted = False
        self._on_evict: Callable[[], None] | None = None

    def share_budget(self, budget: BufferBudget, on_evict: Callable[[], None]) -> None:
        """Count this channel's receive buffers in `budget`; `on_evict` ends its connection if it is dropped."""
        self._budget = budget
        self._on_evict = on_evict
        self._account()

    @property
    def dropped(self) -> str:
        """Why the shared budget dropped this channel ("" if it has not)."""
        return self._dropped if self._evicted else ""

    @property
    def buffered(self) -> int:
        """Received bytes this channel holds that are not yet a delivered message."""
        return len(self._raw) + len(self._plain)

    def _account(self) -> None:
        if self._budget is not None and not self._dropped:
            held = len(self._raw) + len(self._plain)
            if held != self._held:
                self._held = held
                self._budget.update(self, held)

    def _evict(self, reason: str) -> None:
        """Dropped by the budget: free the buffers now and end the connection."""
        self._dropped = reason
        self._evicted = True
        self._raw = bytearray()
        self._plain = bytearray()
        self._held = 0
        if self._on_evict is not None:
            self._on_evict()

    @property
    def broken(self) -> bool:
        """True once a send stopped half-way: the stream is out of sync and must be closed, not reused."""
        return self._broken

    async def send_message(self, payload: bytes | bytearray | memoryview) -> None:
        """Send one application message; messages from concurrent tasks never interleave.

        Frames are encrypted under the send lock, in wire order, because each
        one consumes a nonce: a frame encrypted but never sent would make the
        remote reject every later one. A send interrupted half-way (cancelled,
        or the socket failed) leaves the stream unusable, so the channel is
        then marked broken and closed rather than reused.
        """
        await self.send_parts((payload,))

    async def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send the concatenation of `parts` as one application message, without joining them first.

        Lets a caller put a small header in front of a large piece of data
        without copying the data into a new buffer just to prepend it.
        """
        views = [memoryview(p).cast("B") for p in parts]
        total = sum(len(v) for v in views)
        if total > MESSAGE_MAX:
            raise ProtocolError("outgoing message too large")
        # Fast path: an uncontended `async with lock` still costs a scheduler round.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self._broken:
                raise ConnectionClosed("connection broken by an interrupted send")
            out = self._frames(views, total)
            self._broken = True
            try:
                await self.stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionClosed("connection lost while sending") from exc
            self._broken = False
        finally:
            self._send_lock.release()

    def _frames(self, views: list[memoryview], total: int) -> bytearray:
        """Encrypt the 4-byte length plus `views` into length-prefixed Noise frames.

        Full frames are encrypted straight from the caller's buffers; only the
        bytes of a frame that straddles two parts (the length, a header) are joined.
        """
        encrypt = self._enc.encrypt_with_ad
        out = bytearray()

        def emit(plain: bytes | memoryview) -> None:
            ct = encrypt(None, plain)
            out.extend(len(ct).to_bytes(2, "big"))
            out.extend(ct)

        pending: list[bytes | memoryview] = [struct.pack(">I", total)]
        pending_len = 4
        for view in views:
            n = len(view)
            off = 0
            if pending_len:
                off = min(FRAME_PLAINTEXT_MAX - pending_len, n)
                pending.append(view[:off])
                pending_len += off
                if pending_len < FRAME_PLAINTEXT_MAX:
                    continue
                emit(b"".join(pending))
                pending, pending_len = [], 0
            while n - off >= FRAME_PLAINTEXT_MAX:
                emit(view[off : off + FRAME_PLAINTEXT_MAX])
                off += FRAME_PLAINTEXT_MAX
            if off < n:
                pending.append(view[off:])
                pending_len = n - off
        if pending_len:
            emit(b"".join(pending))
        return out

    async def _fill_raw(self) -> None:
        if self._dropped:
            raise ConnectionClosed(self._dropped)
        try:
            data = await self.stream.receive_some(_RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionClosed("connection lost while receiving") from exc
        if not data:
            raise ConnectionClosed("remote closed the connection")
        if self._dropped:
            raise ConnectionClosed(self._dropped)
        self._raw += data
        self._account()

    def _decrypt_buffered(self) -> bool:
        """Decrypt one frame if it is wholly received; False if more bytes are needed."""
        if len(self._raw) < 2:
            return False
        size = int.from_bytes(self._raw[:2], "big")
        if size < 16:
            raise ProtocolError("encrypted frame shorter than its tag")
        if len(self._raw) < 2 + size:
            return False
        # Decrypt straight out of the receive buffer (no copy of the frame); the
        # views must be released before the buffer can shrink.
        raw = memoryview(self._raw)
        frame = raw[2 : 2 + size]
        try:
            plaintext = self._dec.decrypt_with_ad(None, frame)
        except Exception as exc:  # InvalidTag and friends: forged or corrupted frame
            raise ProtocolError("frame failed authentication") from exc
        finally:
            frame.release()
            raw.release()
        del self._raw[: 2 + size]
        self._plain += plaintext
        return True

    def _buffered_message(self) -> bytearray | None:
        """The next message if all of it has been received (decrypting what is needed), else None."""
        while True:
            if len(self._plain) >= 4:
                size = int.from_bytes(self._plain[:4], "big")
                if size > MESSAGE_MAX:
                    raise ProtocolError(f"incoming message of {size} bytes exceeds the limit of {MESSAGE_MAX}")
                if len(self._plain) >= 4 + size:
                    msg = self._plain[4 : 4 + size]
                    del self._plain[: 4 + size]
                    self._account()
                    return msg
            if not self._decrypt_buffered():
                self._account()
                return None

    def _expected(self) -> int:
        """Plaintext bytes of the message being received, as far as known (its length once announced)."""
        if len(self._plain) >= 4:
            return 4 + int.from_bytes(self._plain[:4], "big")
        return NOISE_FRAME_MAX

    async def receive_message(self) -> bytearray:
        """Receive the next application message (bounded by MESSAGE_MAX).

        Returns a fresh bytearray the caller owns (one copy out of the
        channel's buffer), so views into it stay valid. Waiting for a
        message to start is the caller's business (its idle timeout); once
        a byte of it has arrived, the whole message must arrive within
        MESSAGE_GRACE plus its size at MESSAGE_MIN_RATE, or ProtocolError.
        """
        msg = self._buffered_message()
        if msg is not None:
            return msg
        if not self._raw and not self._plain:
            await self._fill_raw()  # between messages: may wait as long as the caller lets it
            msg = self._buffered_message()
            if msg is not None:
                return msg
        started = trio.current_time()
        with trio.CancelScope() as scope:
            while True:
                scope.deadline = started + MESSAGE_GRACE + self._expected() / MESSAGE_MIN_RATE
                await self._fill_raw()
                msg = self._buffered_message()
                if msg is not None:
                    return msg
        took = trio.current_time() - started
        raise ProtocolError(f"message of {self._expected()} bytes not received within {took:.0f} s (slow sender)")

    async def aclose(self) -> None:
        """Close the underlying stream (and leave the budget)."""
        if self._budget is not None:
            self._budget.release(self)
            self._dropped = self._dropped or "channel closed"
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


async def _send_hs(stream: trio.abc.Stream, data: bytes) -> None:
    await stream.send_all(len(data).to_bytes(2, "big") + data)


async def _recv_exact(stream: trio.abc.Stream, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = await stream.receive_some(_RECV_SIZE)
        if not data:
            raise HandshakeError("connection closed during handshake")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def _recv_hs(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    size = int.from_bytes(await _recv_exact(stream, buf, 2), "big")
    if size > HANDSHAKE_MESSAGE_MAX:
        raise HandshakeError(f"handshake message of {size} bytes is not a pluto handshake")
    return await _recv_exact(stream, buf, size)


async def handshake(
    stream: trio.abc.Stream,
    static_private: bytes,
    initiator: bool,
    expected_remote: bytes | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> NoiseChannel:
    """Run Noise_XX on `stream` and return the channel; HandshakeError on any failure.

    `expected_remote` pins the remote's static key (a dialled peer must be who
    the coordinator said it is); a mismatch closes the connection.
    """
    noise = NoiseConnection.from_name(PROTOCOL_NAME)
    noise.set_prologue(PROLOGUE)
    noise.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
    noise.start_handshake()
    hs_state = noise.noise_protocol.handshake_state  # kept: noise deletes it once done, with the remote key
    buf = bytearray()
    try:
        with trio.fail_after(timeout):
            if initiator:
                await _send_hs(stream, bytes(noise.write_message()))
                noise.read_message(await _recv_hs(stream, buf))
                await _send_hs(stream, bytes(noise.write_message()))
            else:
                noise.read_message(await _recv_hs(stream, buf))
                await _send_hs(stream, bytes(noise.write_message()))
                noise.read_message(await _recv_hs(stream, buf))
    except trio.TooSlowError as exc:
        raise HandshakeError(f"handshake not finished within {timeout:g} s") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise HandshakeError("connection lost during handshake") from exc
    except HandshakeError:
        raise
    except Exception as exc:  # noiseprotocol and cryptography raise many types on forged input
        raise HandshakeError(f"handshake failed: {type(exc).__name__}") from exc
    if not noise.handshake_finished:
        raise HandshakeError("handshake did not complete")
    remote = hs_state.rs.public_bytes
    if expected_remote is not None and remote != expected_remote:
        raise HandshakeError("remote is not the peer we dialled (peer id mismatch)")
    channel = NoiseChannel(stream, noise, remote)
    channel._raw += buf  # the initiator may pipeline its first message behind handshake message 3
    return channel
