"""Storage exchange: you may store what your own peers offer (divided by n/k) plus a grace."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from pluto_fs.errors import QuotaExceeded
from pluto_fs.grid.testing import start_mounted_volume
from pluto_fs.volume.tree import Tree
from pluto_fs.volume.volume import open_volume


def _status(home: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "pluto_fs.cli.main", "status", "--json", "--home", str(home)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_going_over_the_exchange_gives_enospc_at_write_time_and_peers_refuse_too(tmp_path: Path) -> None:
    vol = start_mounted_volume(tmp_path / "m", own_peers=False, grace="24M")
    try:
        first = os.urandom(4 << 20)
        with open(vol.path / "first.bin", "wb") as f:
            f.write(first)
            f.flush()
            os.fsync(f.fileno())
        deadline = time.monotonic() + 30
        while True:  # wait until peers reported the usage and the mount refreshed its figures
            status = _status(vol.home.path)
            if status["exchange"] and status["exchange"]["used"] >= 4 << 20:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["exchange"]["offered"] == 0 and status["exchange"]["allowed"] == 24 << 20
        # df shows the allowance in user bytes (raw / (n/k)), not the peers' disks, once the mount's
        # periodic allowance refresh has run (a fixed sleep was a race on a loaded machine)
        deadline = time.monotonic() + 30
        while True:
            st = os.statvfs(vol.path)
            total, avail = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            if 0 < total <= (24 << 20) * 3 // 5 and avail < total:  # the allowance, less what first.bin uses
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.5)
        with pytest.raises(OSError) as err:
            with open(vol.path / "second.bin", "wb") as f:
                for _ in range(16):
                    f.write(os.urandom(1 << 20))
        assert err.value.errno == errno.ENOSPC
        assert (vol.path / "first.bin").read_bytes() == first  # nothing lost by the refusal
        vol.unmount()

        # The peers enforce it as well: a client that skips the mount's check is refused there.
        async def direct() -> None:
            async with open_volume(vol.home) as v:
                src = tmp_path / "big"
                src.mkdir()
                (src / "x.bin").write_bytes(os.urandom(64 << 20))  # peers see each other's share only
                # through heartbeats, so the refusal comes once the lag is covered
                await Tree(v, v.keys.root).upload(src, "/")

        with pytest.raises(QuotaExceeded):
            trio.run(direct)
    finally:
        vol.close()
