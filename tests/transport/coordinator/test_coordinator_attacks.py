"""Strangers who attack the coordinator's reputation and privacy (docs/TRUST.md "Attacks on reputation and privacy").

Each test is one attack, run against a real coordinator over Noise on loopback.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.lowlevel
from nacl.signing import SigningKey

from tests.transport.coordinator.test_coordinator import Party, coordinator, party, run
from transport.coordinator.client import PeerRecord, deposit_anonymously
from transport.coordinator.schema import DB_NAME
from transport.protocol.pool import open_pool

STORED = 4 << 20  # what each peer reports storing for the honest client: full reporter weight


async def _peers(addr: str, parties: list[Party], honest: Party) -> None:
    """Register every party as a peer that stores STORED bytes for `honest`."""
    for i, p in enumerate(parties):
        await p.client.register(f"127.0.0.{i + 1}:{9300 + i}", capacity=1 << 30, free=1 << 29)
        await p.client.heartbeat(1 << 29, STORED, [(honest.id, STORED)])


async def _sybil_reports(addr: str, targets: list[bytes], reports: int, ok: bool) -> int:
    """`reports` reports from throwaway keys (a fresh key for every one); returns how many counted."""
    from nacl.public import PrivateKey

    from transport.coordinator.client import CoordinatorClient

    counted = 0
    for i in range(reports):
        async with open_pool(bytes(PrivateKey.generate())) as pool:
            client = CoordinatorClient.from_pool(pool, addr, timeout=5.0)
            if ok:
                counted += await client.report_audit(targets[i % len(targets)], passed=1)
            else:
                counted += await client.report_audit(targets[i % len(targets)], failed=16)
    return counted


async def _records(p: Party) -> dict[bytes, PeerRecord]:
    return {r.id: r for r in await p.client.list_peers()}


def test_sixty_false_failure_reports_from_throwaway_keys_disqualify_no_one(tmp_path: Path) -> None:
    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as honest:
            async with party(addr) as p1, party(addr) as p2, party(addr) as p3:
                peers = [p1, p2, p3]
                await _peers(addr, peers, honest)
                assert await _sybil_reports(addr, [p.id for p in peers], 60, ok=False) == 0
                records = await _records(honest)
                for p in peers:
                    r = records[p.id]
                    assert not r.disqualified and r.eligible and r.audits_failed == 0, r
                assert len(await honest.client.find_peers(10)) == 3

    run(body)


def test_ok_reports_from_throwaway_keys_do_not_restore_a_peer_real_audits_found_failing(tmp_path: Path) -> None:
    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as honest, party(addr) as friend:
            async with party(addr) as cheat, party(addr) as fair:
                await _peers(addr, [cheat, fair], honest)
                # The cheat's friend really stores a little there too, and vouches for it.
                await cheat.client.heartbeat(1 << 29, STORED, [(honest.id, STORED), (friend.id, STORED)])
                assert await honest.client.report_audit(cheat.id, passed=125, failed=16)
                assert (await _records(honest))[cheat.id].disqualified
                assert await _sybil_reports(addr, [cheat.id], 120, ok=True) == 0
                assert await friend.client.report_audit(cheat.id, passed=141)  # counts, but cannot lift it
                record = (await _records(honest))[cheat.id]
                assert record.disqualified and not record.eligible, record
                assert cheat.id not in {f.id for f in await honest.client.find_peers(10)}

    run(body)


def test_every_failure_of_a_run_counts_and_a_success_right_after_does_not_erase_them(tmp_path: Path) -> None:
    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as honest, party(addr) as cheat:
            await _peers(addr, [cheat], honest)
            # The run: 141 fragments, 16 failed columns; the old first-wins rule counted one "ok".
            assert await honest.client.report_audit(cheat.id, passed=125, failed=16)
            assert await honest.client.report_audit(cheat.id, True)  # a clean audit right after
            record = (await _records(honest))[cheat.id]
            assert record.audits_failed == 16 and record.audits_ok == 1, record
            assert record.reputation < 0.25 and record.disqualified, record
            # Failures one at a time (the read path) all count too.
            for _ in range(3):
                assert await honest.client.report_audit(cheat.id, False)
            assert (await _records(honest))[cheat.id].audits_failed == 19

    run(body)


def _database_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob(DB_NAME + "*")) if p.is_file())


def test_no_client_peer_usage_row_is_kept_on_disk(tmp_path: Path) -> None:
    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as honest, party(addr) as p1, party(addr) as p2:
            await _peers(addr, [p1, p2], honest)
            allowance = await honest.client.allowance()
            assert allowance.used == 2 * STORED  # the storage exchange still sums what peers report
            live = _database_bytes(tmp_path)
            assert p1.id in live and honest.id not in live
            # A peer that stops storing for the client stops counting.
            await p1.client.heartbeat(1 << 29, 0, [])
            assert (await honest.client.allowance()).used == STORED
        assert honest.id not in _database_bytes(tmp_path)

    run(body)


def test_a_deleted_mailbox_blob_is_in_neither_the_database_nor_its_wal(tmp_path: Path) -> None:
    owner = SigningKey.generate()
    mailbox = bytes(owner.verify_key)
    marker = b"UNIQUE-MARKER-7f3a9c" * 10

    async def body() -> None:
        async with coordinator(tmp_path) as addr, party(addr) as me:
            await deposit_anonymously(addr, mailbox, b"kept" * 20)
            await deposit_anonymously(addr, mailbox, marker)
            items = await me.client.fetch_mailbox(owner)
            assert marker in _database_bytes(tmp_path)  # sanity: it was written
            assert await me.client.delete_from_mailbox(owner, [i.id for i in items if i.blob == marker]) == 1
            await trio.lowlevel.checkpoint()
            live = _database_bytes(tmp_path)
            assert b"UNIQUE-MARKER" not in live
            assert b"kept" * 20 in live
            assert (tmp_path / (DB_NAME + "-wal")).stat().st_size == 0

    run(body)
