"""PackStore.gather: which fragments it keeps, and which peers it blames (fake network, trio's virtual clock)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from pluto_fs.store.pack_io import PackStore
from pluto_fs.store.packs import encode_pack
from transport.errors import ConnectionClosed, RemoteError

PEERS = (b"p0", b"p1", b"p2", b"p3", b"p4")


class _Client:
    def __init__(self, fragments: dict[bytes, bytes], fault: BaseException | None, truncate: bool) -> None:
        self.fragments, self.fault, self.truncate = fragments, fault, truncate

    async def get_fragment(self, frag_id: bytes, verify: bool = True) -> bytes:
        if self.fault is not None:
            raise self.fault
        data = self.fragments[frag_id]
        return data[:-1] if self.truncate else data


class _Coordinator:
    def __init__(self) -> None:
        self.reports: list[tuple[bytes, bool]] = []

    async def report_audit(self, peer: bytes, ok: bool) -> None:
        self.reports.append((peer, ok))


class _Net:
    def __init__(self, clients: dict[bytes, _Client]) -> None:
        self.clients = clients
        self.coordinator = _Coordinator()

    async def client(self, peer: bytes) -> _Client:
        return self.clients[peer]

    def listed_offline(self) -> set[bytes]:
        return set()


def _gather(faults: dict[bytes, BaseException], truncated: set[bytes]) -> tuple[dict[int, bytes], list, Any]:
    layout, fragments = encode_pack(bytes(range(256)) * 40, 3, 5, 4096)
    by_id = {layout.segments[0].fragment_ids[c]: fragments[0][c] for c in range(5)}
    net = _Net({p: _Client(by_id, faults.get(p), p in truncated) for p in PEERS})
    store = PackStore(net, None, b"k" * 32)  # type: ignore[arg-type]
    got: dict[int, bytes] = {}

    async def run() -> None:
        got.update(await store.gather(layout, PEERS, 0, range(5)))

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    return got, net.coordinator.reports, fragments


def test_a_fragment_of_the_wrong_length_is_dropped_and_held_against_its_peer() -> None:
    got, reports, fragments = _gather({}, {b"p0"})
    assert sorted(got) == [1, 2, 3]
    assert all(got[c] == fragments[0][c] for c in got)
    assert reports == [(b"p0", False)]


def test_a_fragment_the_transport_refused_is_held_against_its_peer_and_a_lost_connection_is_not() -> None:
    faults = {b"p0": RemoteError("corrupt", "does not match its id"), b"p1": ConnectionClosed("gone")}
    got, reports, _ = _gather(faults, set())
    assert sorted(got) == [2, 3, 4]
    assert reports == [(b"p0", False)]
