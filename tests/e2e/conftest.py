"""Fixtures that start real pluto processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pluto_fs.grid.localgrid import LocalGrid


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[LocalGrid]:
    """A coordinator and five storage peers as separate processes, stopped after the test."""
    g = LocalGrid(tmp_path / "grid", peers=5, capacity="1G", heartbeat=0.5)
    try:
        g.start()
        yield g
    finally:
        g.stop()


@pytest.fixture
def grid6(tmp_path: Path) -> Iterator[LocalGrid]:
    """Six peers (one more than n, so repair has somewhere to go); fast heartbeats and audit reports."""
    g = LocalGrid(tmp_path / "grid", peers=6, capacity="1G", heartbeat=0.3, audit_report_interval=0.01)
    try:
        g.start()
        yield g
    finally:
        g.stop()
