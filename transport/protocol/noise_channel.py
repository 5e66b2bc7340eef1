"""Mutually authenticated, encrypted channels: Noise_XX over a trio stream.

Wire format: every Noise message (handshake or transport) is preceded by a
2-byte big-endian length, as the Noise spec suggests. After the handshake the
channel carries length-prefixed application messages (4-byte length, then
that many bytes) split across as many Noise frames as needed.

The remote's static X25519 key, authenticated by the handshake, is its peer
id. Nothing is read from the remote before the handshake completes except
the handshake itself, whose messages are tiny and bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import trio
from noise.connection import Keypair, NoiseConnection

from transport.errors import ConnectionClosed, HandshakeError, ProtocolError
from transport.protocol.limits import FRAME_PLAINTEXT_MAX, HANDSHAKE_TIMEOUT, MESSAGE_MAX

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"pluto/1"
HANDSHAKE_MESSAGE_MAX = 256  # XX messages are at most 96 bytes plus empty payloads
_RECV_SIZE = 256 * 1024


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
        try:
            data = await self.stream.receive_some(_RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionClosed("connection lost while receiving") from exc
        if not data:
            raise ConnectionClosed("remote closed the connection")
        self._raw += data

    async def _decrypt_one_frame(self) -> None:
        while len(self._raw) < 2:
            await self._fill_raw()
        size = int.from_bytes(self._raw[:2], "big")
        if size < 16:
            raise ProtocolError("encrypted frame shorter than its tag")
        while len(self._raw) < 2 + size:
            await self._fill_raw()
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

    async def receive_message(self) -> bytearray:
        """Receive the next application message (bounded by MESSAGE_MAX).

        Returns a fresh bytearray the caller owns (one copy out of the
        channel's buffer), so views into it stay valid.
        """
        while len(self._plain) < 4:
            await self._decrypt_one_frame()
        size = int.from_bytes(self._plain[:4], "big")
        if size > MESSAGE_MAX:
            raise ProtocolError(f"incoming message of {size} bytes exceeds the limit of {MESSAGE_MAX}")
        while len(self._plain) < 4 + size:
            await self._decrypt_one_frame()
        msg = self._plain[4 : 4 + size]
        del self._plain[: 4 + size]
        return msg

    async def aclose(self) -> None:
        """Close the underlying stream."""
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
