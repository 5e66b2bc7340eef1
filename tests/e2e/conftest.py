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
