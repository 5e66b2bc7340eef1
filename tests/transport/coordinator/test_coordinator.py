"""The coordinator over real Noise connections on loopback, with several client keys."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from transport.coordinator.client import CoordinatorClient, deposit_anonymously
from transport.coordinator.limits import CoordinatorLimits
from transport.coordinator.messages import mailbox_message, username_claim_message
from transport.coordinator.reputation import add_audit, decay_audit_weights, reputation_score, uptime_fraction
from transport.coordinator.schema import DB_NAME
from transport.coordinator.service import run_coordinator
from transport.errors import HandshakeError, ProtocolError, RemoteError
from transport.protocol.peer_id import parse_peer_id
from transport.protocol.pool import PeerPool, open_pool
from transport.protocol.rpc import RpcConnection
from transport.protocol.server import RpcService, serve_rpc

TEST_DEADLINE = 15.0


def run(fn: Callable[[], Awaitable[None]]) -> None:
    """Run one async test body under trio with a hard deadline."""

    async def main() -> None:
        """The body, bounded in time."""
        with trio.fail_after(TEST_DEADLINE):
            await fn()

    trio.run(main)


@asynccontextmanager
async def coordinator(data_dir: Path, **kwargs: object) -> AsyncIterator[str]:
    """A coordinator serving `data_dir` on 127.0.0.1, random port; yields its address."""
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(partial(run_coordinator, data_dir, "127.0.0.1", 0, **kwargs))
        yield f"{host}:{port}"
        nursery.cancel_scope.cancel()


class Party:
    """A client with its own transport key (a peer, a user's device, or a stranger)."""

    def __init__(self, pool: PeerPool, address: str, key: PrivateKey) -> None:
        self.pool = pool
        self.address = address
        self.key = key
        self.id = bytes(key.public_key)
        self.client = CoordinatorClient.from_pool(pool, address, timeout=5.0)

    async def conn(self) -> RpcConnection:
        """The raw connection, for requests the typed client would never send."""
        return await self.pool.get(self.address)


@asynccontextmanager
async def party(address: str) -> AsyncIterator[Party]:
    """A fresh client key connected to the coordinator at `address`."""
    key = PrivateKey.generate()
    async with open_pool(bytes(key)) as pool:
        yield Party(pool, address, key)


async def expect_refusal(code: str, coro: Awaitable[object]) -> RemoteError:
    """Await `coro` and assert it is refused with `code`."""
    with pytest.raises(RemoteError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


# ---- peers -------------------------------------------------------------------


def test_register_heartbeat_find_peers(tmp_path: Path) -> None:
    """Peers register and heartbeat; find_peers offers only live peers with space, honours exclude,
    returns fewer when short."""

    async def body() -> None:
        async with coordinator(tmp_path, heartbeat_interval=0.2) as addr:
            async with party(addr) as p1, party(addr) as p2, party(addr) as p3, party(addr) as p4, party(addr) as user:
                peers = [p1, p2, p3, p4]
                for i, p in enumerate(peers):
                    interval = await p.client.register(f"127.0.0.{i + 1}:{7000 + i}", capacity=10_000, free=5_000 + i)
                    assert interval == 0.2
                # A peer asking for a longer interval than the coordinator's gets the coordinator's.
                assert await p1.client.register("127.0.0.1:7000", 10_000, 5_000, heartbeat_interval=3600) == 0.2

                found = await user.client.find_peers(10)
                assert {f.id for f in found} == {p.id for p in peers}  # fewer than n: all there are
                assert len({f.id for f in found}) == len(found)
                assert {f.address for f in found} == {f"127.0.0.{i + 1}:{7000 + i}" for i in range(4)}
                assert {f.id for f in await user.client.find_peers(2)} <= {p.id for p in peers}
                assert len(await user.client.find_peers(2)) == 2
                found = await user.client.find_peers(10, exclude=[p1.id, p2.id])
                assert {f.id for f in found} == {p3.id, p4.id}
                found = await p3.client.find_peers(10)  # never offered to itself
                assert p3.id not in {f.id for f in found} and len(found) == 3

                # A full peer is not offered.
                await p4.client.heartbeat(free=0, used=10_000)
                assert p4.id not in {f.id for f in await user.client.find_peers(10)}

                # p1 and p2 keep heartbeating; p3 and p4 fall silent and die after 3 intervals.
                deadline = trio.current_time() + 0.9
                while trio.current_time() < deadline:
                    await p1.client.heartbeat(free=4_000, used=6_000)
                    await p2.client.heartbeat(free=4_500, used=5_500)
                    await trio.sleep(0.1)
                found = await user.client.find_peers(10)
                assert {f.id for f in found} == {p1.id, p2.id}
                assert {f.id: f.free for f in found} == {p1.id: 4_000, p2.id: 4_500}
                assert (await user.client.lookup_peer(p3.id)).alive is False
                assert (await user.client.lookup_peer(p1.id)).alive is True
                assert await user.client.lookup_peer(user.id) is None

                records = {r.id: r for r in await user.client.list_peers()}
                assert set(records) == {p.id for p in peers}
                r1, r3 = records[p1.id], records[p3.id]
                assert (r1.capacity, r1.free, r1.used, r1.alive) == (10_000, 4_000, 6_000, True)
                assert r3.alive is False and r3.uptime < r1.uptime <= 1.0
                assert r1.uptime > 0.6
                # offline_for is the coordinator's own count since the last heartbeat (0 while alive):
                # p3 last spoke before the 0.9 s loop and is dead only after 3 x 0.2 s.
                assert r1.offline_for == 0.0 and 0.6 <= r3.offline_for < 10.0
                assert not r1.disqualified and not r3.disqualified
                assert r1.audits_ok == r1.audits_failed == 0 and r1.reputation == 0.5

                # A peer that restarts on a new port re-registers; clients find it by id.
                await p3.client.register("0.0.0.0:7777", capacity=10_000, free=1_000)
                loc = await user.client.lookup_peer(p3.id)
                assert loc is not None and loc.address == "127.0.0.1:7777" and loc.alive
                assert p3.id in {f.id for f in await user.client.find_peers(10)}

    run(body)


def test_heartbeat_requires_registration(tmp_path: Path) -> None:
    """An unregistered key cannot heartbeat, and free space cannot exceed capacity."""

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as stranger:
            await expect_refusal("not_registered", stranger.client.heartbeat(free=1, used=0))
            assert await stranger.client.find_peers(5) == []
            await stranger.client.register("127.0.0.1:9000", capacity=100, free=100)
            await stranger.client.heartbeat(free=50, used=50)
            await expect_refusal("bad_request", stranger.client.heartbeat(free=101, used=0))

    run(body)


def test_audit_reports_move_reputation(tmp_path: Path) -> None:
    """Failed audits from reporters the peer stores data for sink it below the floor; clean repeats
    from one reporter within the interval do not count, and a key the peer stores nothing for counts not at all."""

    async def body() -> None:
        async with coordinator(tmp_path) as addr:
            async with party(addr) as peer, party(addr) as good, party(addr) as a, party(addr) as b, party(addr) as c:
                await peer.client.register("127.0.0.1:9100", capacity=100, free=100)
                await good.client.register("127.0.0.1:9101", capacity=100, free=100)
                stored = [(x.id, 4 << 20) for x in (a, b)]  # c stores nothing anywhere
                await peer.client.heartbeat(100, 0, stored)
                await good.client.heartbeat(100, 0, stored)
                assert await a.client.report_audit(good.id, True)
                assert not await a.client.report_audit(good.id, True)  # a clean repeat too soon: not counted
                assert await a.client.report_audit(peer.id, False)
                assert await a.client.report_audit(peer.id, False)  # failures are never rate-bounded away
                assert await b.client.report_audit(peer.id, False)
                assert not await c.client.report_audit(peer.id, False)  # no data there: no say
                await expect_refusal("not_found", a.client.report_audit(b.id, True))  # b is no peer
                await expect_refusal("self_report", peer.client.report_audit(peer.id, True))
                records = {r.id: r for r in await a.client.list_peers()}
                bad = records[peer.id]
                assert (bad.audits_ok, bad.audits_failed) == (0, 3)
                assert bad.reputation < 0.25 and not bad.eligible
                assert bad.disqualified and bad.alive  # heartbeating, but its data should move away
                assert records[good.id].reputation > 0.5 and not records[good.id].disqualified
                # Below the floor: no longer offered for placement.
                assert {f.id for f in await a.client.find_peers(10)} == {good.id}

    run(body)


def test_time_the_coordinator_was_down_is_not_held_against_its_peers(tmp_path: Path) -> None:
    """A coordinator stopped for a day (the demo grid between two runs) does not judge its peers for it."""
    import sqlite3

    async def heartbeats(p: Party, count: int) -> None:
        for _ in range(count):
            await p.client.heartbeat(free=5_000, used=0)
            await trio.sleep(0.11)

    async def before() -> None:
        async with coordinator(tmp_path, heartbeat_interval=0.1) as addr:
            async with party(addr) as p:
                await p.client.register("127.0.0.1:7000", 10_000, 5_000, heartbeat_interval=0.1)
                await heartbeats(p, 10)
                keys.append(p.key)

    keys: list[PrivateKey] = []
    run(before)
    # Everything above happened a day ago, and the coordinator has been stopped since.
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE peers SET first_seen = first_seen - 86400, last_seen = last_seen - 86400,"
               " last_counted = last_counted - 86400")
    db.execute("UPDATE counters SET n = n - 86400 WHERE name = 'awake'")
    db.commit()
    db.close()

    async def after() -> None:
        async with coordinator(tmp_path, heartbeat_interval=0.1) as addr:
            async with open_pool(bytes(keys[0])) as pool, party(addr) as user:
                p = Party(pool, addr, keys[0])
                await heartbeats(p, 2)  # back: it heartbeats again
                record = {r.id: r for r in await user.client.list_peers()}[p.id]
                assert record.alive
                assert record.uptime > 0.5, record  # a day unheard would have made it ~0.0001
                assert p.id in {f.id for f in await user.client.find_peers(5)}  # still offered for placement

    run(after)


def test_reputation_and_uptime_functions() -> None:
    """The pure scoring functions: prior, weighting, forgetting, uptime cap."""

    assert reputation_score(0, 0) == 0.5
    ok_w, fail_w = 0.0, 0.0
    for _ in range(20):
        ok_w, fail_w = add_audit(ok_w, fail_w, 3600, True)
    assert reputation_score(ok_w, fail_w) > 0.9
    ok_w, fail_w = add_audit(ok_w, fail_w, 0, False)
    assert 0.8 < reputation_score(ok_w, fail_w) < 0.96
    # Forgetting pulls any score back towards the prior.
    assert abs(reputation_score(*decay_audit_weights(ok_w, fail_w, 365 * 86400)) - 0.5) < 0.01
    assert uptime_fraction(10, 0.0, 1.0, 10.0) == 1.0
    assert uptime_fraction(50, 0.0, 1.0, 100.0) == 0.5
    assert uptime_fraction(500, 0.0, 1.0, 100.0) == 1.0


# ---- persistence -----------------------------------------------------------


def test_state_survives_restart(tmp_path: Path) -> None:
    """Identity, peers, usernames and mailboxes survive stopping and restarting on the same data dir."""

    owner = SigningKey.generate()
    mailbox = bytes(owner.verify_key)

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as peer:
            first_id = await peer.client.ping()
            await peer.client.register("127.0.0.1:9200", capacity=1_000, free=900)
            await peer.client.claim_username(owner, "alice")
            await deposit_anonymously(addr, mailbox, b"sealed follow request")
            peer_key = peer.id
        async with coordinator(tmp_path) as addr, party(addr) as user:
            assert await user.client.ping() == first_id  # same key file, same identity
            loc = await user.client.lookup_peer(peer_key)
            assert loc is not None and loc.address == "127.0.0.1:9200"
            assert await user.client.lookup_user("alice") == mailbox
            items = await user.client.fetch_mailbox(owner)
            assert [i.blob for i in items] == [b"sealed follow request"]
            other = SigningKey.generate()
            await expect_refusal("taken", user.client.claim_username(other, "alice"))
            # Clients can pin the coordinator's key; an impostor key fails the handshake.
            pinned = CoordinatorClient.from_pool(user.pool, addr, expected_key=parse_peer_id(first_id))
            assert await pinned.lookup_user("alice") == mailbox
            wrong = CoordinatorClient.from_pool(user.pool, addr, expected_key=bytes(32))
            with pytest.raises(HandshakeError):
                await wrong.ping()

    run(body)


# ---- usernames -------------------------------------------------------------


def test_username_claims(tmp_path: Path) -> None:
    """First come first served, idempotent for the same key, signatures, timestamps and names checked."""

    alice, mallory = SigningKey.generate(), SigningKey.generate()

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as device, party(addr) as other_device:
            assert await device.client.lookup_user("alice") is None
            await device.client.claim_username(alice, "alice")
            await other_device.client.claim_username(alice, "alice")  # same key again: fine
            await expect_refusal("taken", other_device.client.claim_username(mallory, "alice"))
            assert await device.client.lookup_user("alice") == bytes(alice.verify_key)
            await device.client.claim_username(mallory, "mal-lory_2")

            conn = await device.conn()
            now = int(time.time())

            def claim(name: str, key: SigningKey, ts: int, signer: SigningKey | None = None) -> dict:
                pub = bytes(key.verify_key)
                sig = (signer or key).sign(username_claim_message(name, pub, ts)).signature
                return {"username": name, "public_key": pub, "timestamp": ts, "signature": sig}

            # Signed by a different key than the one claimed.
            await expect_refusal("bad_signature", conn.call("claim_username", claim("bob", alice, now, mallory)))
            # Signature over a different name.
            args = claim("bob", alice, now)
            args["username"] = "bobby"
            await expect_refusal("bad_signature", conn.call("claim_username", args))
            await expect_refusal("stale_timestamp", conn.call("claim_username", claim("bob", alice, now - 1000)))
            await expect_refusal("stale_timestamp", conn.call("claim_username", claim("bob", alice, now + 1000)))
            for bad_name in ("", "Alice", "a" * 33, "al ice", "ali.ce", "alice\n", "ålice"):
                await expect_refusal("bad_request", conn.call("claim_username", claim(bad_name, alice, now)))
            with pytest.raises(ValueError):
                await device.client.claim_username(alice, "Not Valid")
            assert await device.client.lookup_user("bob") is None
            assert await device.client.lookup_user("bobby") is None

    run(body)


# ---- mailboxes -------------------------------------------------------------


def test_mailbox_deposit_fetch_delete(tmp_path: Path) -> None:
    """Anyone deposits; only the mailbox key fetches or deletes, with single-use nonces bound to mailbox and action."""

    owner, intruder = SigningKey.generate(), SigningKey.generate()
    mailbox = bytes(owner.verify_key)

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as me, party(addr) as stranger:
            for i in range(3):
                await deposit_anonymously(addr, mailbox, b"request %d" % i)
            await stranger.client.mailbox_deposit(mailbox, b"x" * 1024)
            items = await me.client.fetch_mailbox(owner)
            assert [i.blob for i in items] == [b"request 0", b"request 1", b"request 2", b"x" * 1024]
            assert len({i.id for i in items}) == 4

            # Only the mailbox key can fetch or delete.
            nonce = await stranger.client.mailbox_challenge(mailbox)
            forged = intruder.sign(mailbox_message("fetch", mailbox, nonce)).signature
            await expect_refusal("bad_signature", stranger.client.mailbox_fetch(mailbox, nonce, forged))
            assert await stranger.client.fetch_mailbox(intruder) == []  # its own, empty mailbox
            nonce = await stranger.client.mailbox_challenge(mailbox)
            forged = intruder.sign(mailbox_message("delete", mailbox, nonce)).signature
            await expect_refusal("bad_signature", stranger.client.mailbox_delete(mailbox, nonce, forged, [items[0].id]))

            # A nonce is single use.
            nonce = await me.client.mailbox_challenge(mailbox)
            sig = owner.sign(mailbox_message("fetch", mailbox, nonce)).signature
            assert len(await me.client.mailbox_fetch(mailbox, nonce, sig)) == 4
            await expect_refusal("bad_nonce", me.client.mailbox_fetch(mailbox, nonce, sig))
            # A fetch signature is not a delete signature.
            nonce = await me.client.mailbox_challenge(mailbox)
            sig = owner.sign(mailbox_message("fetch", mailbox, nonce)).signature
            await expect_refusal("bad_signature", me.client.mailbox_delete(mailbox, nonce, sig, [items[0].id]))
            # A nonce issued for another mailbox, or made up, is refused.
            other_nonce = await me.client.mailbox_challenge(bytes(intruder.verify_key))
            sig = owner.sign(mailbox_message("fetch", mailbox, other_nonce)).signature
            await expect_refusal("bad_nonce", me.client.mailbox_fetch(mailbox, other_nonce, sig))
            made_up = bytes(32)
            sig = owner.sign(mailbox_message("fetch", mailbox, made_up)).signature
            await expect_refusal("bad_nonce", me.client.mailbox_fetch(mailbox, made_up, sig))

            assert await me.client.delete_from_mailbox(owner, [items[0].id, items[2].id, 12345]) == 2
            assert [i.blob for i in await me.client.fetch_mailbox(owner)] == [b"request 1", b"x" * 1024]
            await expect_refusal("bad_request", stranger.client.mailbox_deposit(mailbox, b"x" * 1025))

    run(body)


def test_mailbox_flood_is_bounded_and_keeps_earlier_blobs(tmp_path: Path) -> None:
    """300 deposits: 256 stored, the rest refused, the stored ones intact and in order."""

    owner = SigningKey.generate()
    mailbox = bytes(owner.verify_key)

    async def body() -> None:
        # The rate limit is lifted here so that the per-mailbox bound itself is reached.
        limits = CoordinatorLimits(mailbox_rate=10_000)
        async with coordinator(tmp_path, limits=limits) as addr, party(addr) as flooder, party(addr) as me:
            refused = []
            for i in range(300):
                try:
                    await flooder.client.mailbox_deposit(mailbox, b"blob %03d" % i)
                except RemoteError as exc:
                    refused.append((i, exc.code))
            assert refused == [(i, "mailbox_full") for i in range(256, 300)]
            items = await me.client.fetch_mailbox(owner)
            assert [i.blob for i in items] == [b"blob %03d" % i for i in range(256)]
            # Emptying the mailbox makes room again.
            assert await me.client.delete_from_mailbox(owner, [i.id for i in items[:10]]) == 10
            await flooder.client.mailbox_deposit(mailbox, b"late")
            assert (await me.client.fetch_mailbox(owner))[-1].blob == b"late"

    run(body)


def test_mailbox_rate_limit(tmp_path: Path) -> None:
    """More than 30 deposits a minute to one mailbox are refused without touching earlier blobs."""

    owner = SigningKey.generate()
    mailbox = bytes(owner.verify_key)

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as flooder, party(addr) as me:
            codes = []
            for i in range(40):
                try:
                    await flooder.client.mailbox_deposit(mailbox, b"%d" % i)
                    codes.append("ok")
                except RemoteError as exc:
                    codes.append(exc.code)
            assert codes == ["ok"] * 30 + ["rate_limited"] * 10
            await expect_refusal("rate_limited", deposit_anonymously(addr, mailbox, b"fresh key, same limit"))
            # Other mailboxes are unaffected; the limited one kept its 30 blobs.
            await flooder.client.mailbox_deposit(bytes(SigningKey.generate().verify_key), b"elsewhere")
            assert [i.blob for i in await me.client.fetch_mailbox(owner)] == [b"%d" % i for i in range(30)]

    run(body)


def _database_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("coordinator.sqlite*")))


def test_database_never_holds_the_depositor(tmp_path: Path) -> None:
    """The SQLite files (live and after shutdown) contain neither the depositor's key nor its address."""

    owner = SigningKey.generate()
    mailbox = bytes(owner.verify_key)

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as depositor:
            conn = await depositor.conn()
            local = conn.channel.stream.socket.getsockname()
            depositor_address = f"{local[0]}:{local[1]}".encode()
            await depositor.client.mailbox_deposit(mailbox, b"opaque" * 100)
            await depositor.client.mailbox_deposit(mailbox, b"again")
            await depositor.client.mailbox_deposit(mailbox, b"FETCHED-AND-DELETED" * 20)
            items = await depositor.client.fetch_mailbox(owner)
            assert await depositor.client.delete_from_mailbox(owner, [items[-1].id]) == 1
            live = _database_bytes(tmp_path)
            assert mailbox in live  # sanity: the dump does contain what was stored
            assert depositor.id not in live
            assert depositor_address not in live
        after = _database_bytes(tmp_path)
        assert b"opaque" * 100 in after
        assert depositor.id not in after
        assert depositor_address not in after
        assert b"FETCHED-AND-DELETED" not in after  # secure_delete: no leftovers in free pages

    run(body)


# ---- hostile input ---------------------------------------------------------


def test_malformed_arguments_are_refused_and_server_keeps_serving(tmp_path: Path) -> None:
    """Wrong types, sizes and ranges are refused with bad_request and change nothing."""

    key32 = bytes(32)
    bad_calls: list[tuple[str, dict]] = [
        ("register", {}),
        ("register", {"address": 7, "capacity": 1, "free": 1}),
        ("register", {"address": "nohost", "capacity": 1, "free": 1}),
        ("register", {"address": "h:0", "capacity": 1, "free": 1}),
        ("register", {"address": "h:٨٠", "capacity": 1, "free": 1}),
        ("register", {"address": "h" * 301 + ":1", "capacity": 1, "free": 1}),
        ("register", {"address": "bad host:1", "capacity": 1, "free": 1}),
        ("register", {"address": "h:1", "capacity": -1, "free": 0}),
        ("register", {"address": "h:1", "capacity": 2**64, "free": 0}),
        ("register", {"address": "h:1", "capacity": True, "free": 0}),
        ("register", {"address": "h:1", "capacity": 5, "free": 6}),
        ("register", {"address": "h:1", "capacity": 5, "free": 1, "heartbeat_interval": float("nan")}),
        ("register", {"address": "h:1", "capacity": 5, "free": 1, "heartbeat_interval": "30"}),
        ("register", {"address": "h:1", "capacity": 5, "free": 1, "heartbeat_interval": 0}),
        ("heartbeat", {"free": "1", "used": 0}),
        ("find_peers", {"n": 0}),
        ("find_peers", {"n": 257}),
        ("find_peers", {"n": 1.5}),
        ("find_peers", {"n": 3, "exclude": [b"short"]}),
        ("find_peers", {"n": 3, "exclude": [key32] * 1025}),
        ("find_peers", {"n": 3, "exclude": key32}),
        ("lookup_peer", {"id": b"x" * 31}),
        ("lookup_peer", {"id": "text"}),
        ("lookup_user", {"username": None}),
        ("lookup_user", {"username": "x" * 10_000}),
        ("claim_username", {"username": "a", "public_key": key32, "timestamp": "now", "signature": bytes(64)}),
        ("claim_username", {"username": "a", "public_key": key32, "timestamp": -1, "signature": bytes(64)}),
        ("claim_username", {"username": "a", "public_key": key32, "timestamp": 1, "signature": bytes(63)}),
        ("mailbox_deposit", {"mailbox": key32, "blob": "text"}),
        ("mailbox_deposit", {"mailbox": key32 + b"x", "blob": b""}),
        ("mailbox_deposit", {"mailbox": key32, "blob": bytes(1_000_000)}),
        ("mailbox_challenge", {"mailbox": [key32]}),
        ("mailbox_fetch", {"mailbox": key32, "nonce": bytes(31), "signature": bytes(64)}),
        ("mailbox_delete", {"mailbox": key32, "nonce": bytes(32), "signature": bytes(64), "ids": ["1"]}),
        ("mailbox_delete", {"mailbox": key32, "nonce": bytes(32), "signature": bytes(64), "ids": list(range(1, 300))}),
        ("report_audit", {"peer": key32, "ok": 1}),
        ("report_audit", {"peer": key32}),
    ]

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as attacker, party(addr) as bystander:
            conn = await attacker.conn()
            for method, args in bad_calls:
                try:
                    await conn.call(method, args, timeout=5)
                except RemoteError as exc:
                    assert exc.code == "bad_request", (method, args, exc)
                else:
                    raise AssertionError(f"{method} accepted {args!r}")
            await expect_refusal("unknown_method", conn.call("drop_tables", {}))
            # Still serving, on the same connection and to others; nothing was stored.
            assert (await attacker.client.ping()).startswith("b")
            assert await bystander.client.list_peers() == []
            await bystander.client.register("127.0.0.1:9300", capacity=10, free=10)
            assert [p.id for p in await attacker.client.find_peers(3)] == [bystander.id]

    run(body)


# ---- a hostile coordinator ---------------------------------------------------


class _ListPeersLiar(RpcService):
    """A "coordinator" whose list_peers answers whatever row the test gives it."""

    def __init__(self) -> None:
        self.rows: list = []

    async def rpc_list_peers(self, ctx: object, args: dict) -> list:
        """The rows set by the test, as they are."""
        return self.rows


def _peer_row(**changes: object) -> dict:
    row = {"id": bytes(range(32)), "address": "127.0.0.1:9400", "capacity": 10, "free": 5, "used": 5,
           "alive": False, "uptime": 0.5, "audits_ok": 0, "audits_failed": 0, "reputation": 0.5,
           "eligible": False, "disqualified": False, "offline_for": 120.0}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not _MISSING}


_MISSING = object()


def test_offline_for_from_a_hostile_coordinator_is_refused_clearly(tmp_path: Path) -> None:
    """offline_for decides when data is rebuilt: odd types, ranges and contradictions are protocol errors."""

    async def body() -> None:
        liar = _ListPeersLiar()
        key = PrivateKey.generate()
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_rpc, liar, bytes(key), "127.0.0.1", 0)
            addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            async with party(addr) as user:
                liar.rows = [_peer_row()]
                [record] = await user.client.list_peers()
                assert (record.offline_for, record.disqualified) == (120.0, False)
                # An older coordinator says nothing: None, which health treats as "gone for an unknown time".
                liar.rows = [_peer_row(offline_for=_MISSING, disqualified=_MISSING)]
                [record] = await user.client.list_peers()
                assert (record.offline_for, record.disqualified) == (None, False)
                bad_rows = [
                    (_peer_row(offline_for=-1), "'offline_for' must be a number of seconds"),
                    (_peer_row(offline_for=float("nan")), "'offline_for' must be a number of seconds"),
                    (_peer_row(offline_for=float("inf")), "'offline_for' must be a number of seconds"),
                    (_peer_row(offline_for=10**400), "'offline_for' must be a number of seconds"),
                    (_peer_row(offline_for="120"), "'offline_for' must be a number of seconds"),
                    (_peer_row(offline_for=True), "'offline_for' must be a number of seconds"),
                    (_peer_row(offline_for=None), "'offline_for' must be a number of seconds"),
                    (_peer_row(alive=True, offline_for=5.0), "an alive peer cannot have been offline"),
                    (_peer_row(disqualified=1), "'disqualified' must be true or false"),
                ]
                for row, message in bad_rows:
                    liar.rows = [row]
                    with pytest.raises(ProtocolError, match="malformed coordinator answer") as info:
                        await user.client.list_peers()
                    assert message in str(info.value), (row, info.value)
                # Two rows for one peer: the client would not know which state to believe.
                liar.rows = [_peer_row(), _peer_row(alive=True, offline_for=0)]
                with pytest.raises(ProtocolError, match="the same peer listed twice"):
                    await user.client.list_peers()
            nursery.cancel_scope.cancel()

    run(body)
