"""The filesystem under test for the POSIX suites.

`fs_dir` is an empty directory on the filesystem being tested. With
PLUTO_FS_UNDER_TEST=local it is a plain temporary directory (to check the
suite itself against the kernel's own filesystems); by default it is a
directory inside a real pluto FUSE mount over a real 5-peer grid.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pluto_fs.grid.localgrid import LocalGrid


def _under_test() -> str:
    return os.environ.get("PLUTO_FS_UNDER_TEST", "pluto")


@pytest.fixture
def fs_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An empty directory on the filesystem under test."""
    if _under_test() == "local":
        d = tmp_path / "fs"
        d.mkdir()
        yield d
        return
    mount = request.getfixturevalue("pluto_mount")
    d = mount.path / f"t-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGrid]:
    """A coordinator and five storage peers, shared by the tests of one module (it takes seconds to
    start); each test uses its own identity on it."""
    g = LocalGrid(tmp_path_factory.mktemp("grid"), peers=5, capacity="1G", heartbeat=0.5)
    try:
        g.start()
        yield g
    finally:
        g.stop()
