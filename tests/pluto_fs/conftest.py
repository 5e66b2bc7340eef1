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
