"""Receive-side bounds of one channel: slow senders, the shared budget, strict message ends."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from nacl.public import PrivateKey

from transport.errors import ConnectionClosed, ProtocolError
from transport.protocol.limits import MESSAGE_GRACE, MESSAGE_MIN_RATE
from transport.protocol.noise_channel import BufferBudget, NoiseChannel, handshake


async def _pair() -> tuple[NoiseChannel, NoiseChannel]:
    left, right = trio.testing.memory_stream_pair()
    out: dict[str, NoiseChannel] = {}

    async def side(name: str, stream: trio.abc.Stream, initiator: bool) -> None:
        out[name] = await handshake(stream, bytes(PrivateKey.generate()), initiator=initiator)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", left, True)
        nursery.start_soon(side, "b", right, False)
    return out["a"], out["b"]


async def _send_raw(channel: NoiseChannel, plain: bytes) -> None:
    ct = channel._enc.encrypt_with_ad(None, plain)
    await channel.stream.send_all(len(ct).to_bytes(2, "big") + ct)


def test_a_trickling_message_is_dropped_after_its_deadline() -> None:
    """1 MiB announced, 1 KiB/s sent: dropped at GRACE + size/MIN_RATE, not at the idle timeout."""
    size = 1 << 20
    allowed = MESSAGE_GRACE + (size + 4) / MESSAGE_MIN_RATE

    async def main() -> None:
        sender, receiver = await _pair()

        async def trickle() -> None:
            await _send_raw(sender, size.to_bytes(4, "big"))
            for _ in range(size // 1024):
                await trio.sleep(1)
                await _send_raw(sender, bytes(1024))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            start = trio.current_time()
            with pytest.raises(ProtocolError, match="slow sender"):
                await receiver.receive_message()
            assert allowed - 1 <= trio.current_time() - start <= allowed + 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_message_at_the_minimum_rate_arrives() -> None:
    size = 256 * 1024

    async def main() -> None:
        sender, receiver = await _pair()

        async def steady() -> None:
            await _send_raw(sender, size.to_bytes(4, "big"))
            for _ in range(size // 32768):
                await trio.sleep(32768 / MESSAGE_MIN_RATE)
                await _send_raw(sender, bytes(32768))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(steady)
            assert len(await receiver.receive_message()) == size

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_waiting_between_messages_is_not_a_slow_sender() -> None:
    async def main() -> None:
        sender, receiver = await _pair()

        async def later() -> None:
            await trio.sleep(10 * MESSAGE_GRACE)
            await sender.send_message(b"hello")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            assert await receiver.receive_message() == b"hello"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_budget_drops_the_largest_holder() -> None:
    async def main() -> None:
        a_send, a_recv = await _pair()
        b_send, b_recv = await _pair()
        budget = BufferBudget(300_000)
        dropped: list[str] = []
        a_recv.share_budget(budget, lambda: dropped.append("a"))
        b_recv.share_budget(budget, lambda: dropped.append("b"))
        await _send_raw(a_send, (1 << 20).to_bytes(4, "big") + bytes(60_000))
        await _send_raw(b_send, (1 << 20).to_bytes(4, "big") + bytes(30_000))
        for _ in range(3):
            await _send_raw(a_send, bytes(60_000))
            await _send_raw(b_send, bytes(30_000))
        with trio.move_on_after(0.1):
            await b_recv.receive_message()
        assert budget.total < 300_000 and dropped == []
        with pytest.raises(ConnectionClosed):
            with trio.move_on_after(0.1):
                await a_recv.receive_message()
        assert dropped == ["a"] and budget.evictions == 1
        assert budget.total == b_recv.buffered <= budget.limit

    trio.run(main)
