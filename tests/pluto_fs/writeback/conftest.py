"""Fixtures of the write-back engines' tests: a real local grid, one per test module (it takes seconds to start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pluto_fs.grid.localgrid import LocalGrid


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGrid]:
    """A coordinator and five storage peers, shared by the tests of one module."""
    g = LocalGrid(tmp_path_factory.mktemp("grid"), peers=5, capacity="1G", heartbeat=0.5)
    try:
        g.start()
        yield g
    finally:
        g.stop()
