"""Peers that accept connections but never answer (frozen, black-holed): reads go around them.

Killed peers refuse connections at once, which hides this case; a SIGSTOPped
peer is the realistic one (a machine that hangs, a link that drops packets).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pluto_fs.grid.testing import start_mounted_volume
from transport.protocol.peer_id import parse_peer_id


def test_a_cold_read_with_two_of_five_peers_frozen_does_not_wait_for_them(tmp_path: Path) -> None:
    vol = start_mounted_volume(tmp_path / "m", timeout=300.0)
    try:
        vol.reconfigure(request_timeout=60.0)  # any wait for a frozen peer takes a minute
        data = os.urandom(24 << 20)  # three packs, 24 segments: folder and pack records, fragments
        (vol.path / "photos").mkdir()
        with open(vol.path / "photos" / "big.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        vol.remount_fresh()
        frozen = [vol.grid.storage[0].proc, vol.grid.storage[1].proc]  # hold the primaries of some segments
        for p in frozen:
            p.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            got = (vol.path / "photos" / "big.bin").read_bytes()
            elapsed = time.monotonic() - start
        finally:
            for p in frozen:
                p.send_signal(signal.SIGCONT)
        assert got == data
        # Waiting out the frozen peers even once would take 60 s; before hedging it took 40 s at 10 s.
        assert elapsed < 30, f"the read took {elapsed:.1f} s: it waited for frozen peers"
        # ...and `pluto status` says which peers were slow (the mount rewrites its status every second).
        frozen_ids = {parse_peer_id(vol.grid.storage[i].peer_id).hex() for i in (0, 1)}
        deadline = time.monotonic() + 10
        while True:
            res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", "status", "--json", "--home",
                                  str(vol.home.path)], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            slow = set(json.loads(res.stdout)["slow_peers"])
            if frozen_ids <= slow:
                break
            assert time.monotonic() < deadline, f"status lists {slow} as slow, not the frozen {frozen_ids}"
            time.sleep(0.5)
    finally:
        vol.close()


def test_fsync_with_a_frozen_peer_does_not_wait_for_it_and_the_data_reads_back(tmp_path: Path) -> None:
    vol = start_mounted_volume(tmp_path / "m", timeout=300.0)
    try:
        vol.reconfigure(request_timeout=60.0)  # any wait for a frozen peer takes a minute
        (vol.path / "warm").write_bytes(b"connections to every peer are open")
        os.sync()
        frozen = vol.grid.storage[2].proc
        frozen.send_signal(signal.SIGSTOP)
        try:
            data = os.urandom(6 << 20)
            start = time.monotonic()
            with open(vol.path / "precious.bin", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # 4 of 5 columns (happy) placed: durable, whatever peer 2 does
            elapsed = time.monotonic() - start
        finally:
            frozen.send_signal(signal.SIGCONT)
        assert elapsed < 30, f"fsync took {elapsed:.1f} s: it waited for the frozen peer"
        vol.remount_fresh()
        assert (vol.path / "precious.bin").read_bytes() == data
    finally:
        vol.close()
