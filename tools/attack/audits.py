"""Sybil audit reports against a local grid's coordinator.

Throwaway keys (a fresh Noise key per report, no data stored anywhere) send
false "failed" reports about half the grid's peers, then false "ok" reports;
meanwhile an honest client asks the coordinator for peers to place data on.
Prints one line per attack: what was tried, what it cost the attacker, what
the honest client saw. docs/TRUST.md, "Attacks on reputation and privacy",
describes the defences. Usage: python -m tools.attack.audits [--reports N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio
from nacl.public import PrivateKey

from pluto_fs.grid.localgrid import LocalGrid
from transport.coordinator.client import CoordinatorClient
from transport.errors import TransportError
from transport.protocol.pool import open_pool


async def _report(address: str, peer: bytes, failed: bool) -> bool:
    """One report from a brand-new key; whether the coordinator counted it."""
    async with open_pool(bytes(PrivateKey.generate())) as pool:
        client = CoordinatorClient.from_pool(pool, address, timeout=5.0)
        try:
            return await client.report_audit(peer, passed=0 if failed else 1, failed=16 if failed else 0)
        except TransportError:
            return False


async def _attack(address: str, reports: int, failed: bool) -> None:
    async with open_pool(bytes(PrivateKey.generate())) as pool:
        honest = CoordinatorClient.from_pool(pool, address, timeout=5.0)
        for _ in range(100):  # until every peer has registered
            peers = await honest.list_peers()
            if len(peers) >= 6:
                break
            await trio.sleep(0.2)
        targets = [p.id for p in peers[:3]]
        started = time.monotonic()
        counted = 0
        for i in range(reports):
            counted += await _report(address, targets[i % len(targets)], failed)
        took = time.monotonic() - started
        records = {p.id: p for p in await honest.list_peers()}
        lost = sum(1 for t in targets if records[t].disqualified)
        found = len(await honest.find_peers(10))
        kind = "false 'failed'" if failed else "false 'ok'"
        print(f"{reports} {kind} reports from {reports} throwaway keys against 3 of 6 peers: "
              f"cost {took:.1f} s and no stored data; {counted} counted; "
              f"honest client sees {lost} peers disqualified, {found} of 6 offered for placement")


def main(argv: list[str] | None = None) -> int:
    """Run both attacks against a fresh 6-peer local grid and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=60, help="reports per attack (default 60)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pluto-attack-") as tmp:
        grid = LocalGrid(Path(tmp) / "grid", peers=6, capacity="1G", heartbeat=0.3, audit_report_interval=0.01)
        with grid:
            assert grid.coordinator is not None
            trio.run(_attack, grid.coordinator.address, args.reports, True)
            trio.run(_attack, grid.coordinator.address, args.reports, False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
