"""The home lock (pluto_fs/home_lock.py): one writer per home, refusals that name the holder.

flock(2) locks belong to an open file description, so two `hold`s in one
process conflict exactly as two processes do. The refusals of real commands
next to a real mount are in tests/e2e/test_mount_lifecycle.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pluto_fs import home_lock
from pluto_fs.home import Home


def test_a_second_holder_is_refused_with_one_line_naming_the_first(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with home_lock.hold(home, "mount", Path("/mnt/pluto")):
        assert home_lock.holder(home)["pid"] == os.getpid()
        with pytest.raises(home_lock.HomeInUse) as err:
            with home_lock.hold(home, "put"):
                pass
        text = str(err.value)
        assert "\n" not in text
        assert f"`pluto mount` (pid {os.getpid()}, mounted on /mnt/pluto)" in text and "unmount it first" in text
        with pytest.raises(home_lock.HomeInUse):
            home_lock.check_free(home)
    assert home_lock.holder(home) is None
    home_lock.check_free(home)


def test_the_social_lock_is_separate_from_the_home_lock(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    with home_lock.hold(home, "mount", Path("/mnt/pluto")):
        with home_lock.hold(home, "share", name=home_lock.SOCIAL_LOCK):
            with pytest.raises(home_lock.HomeInUse) as err:
                with home_lock.hold(home, "follow", name=home_lock.SOCIAL_LOCK):
                    pass
            assert "`pluto share`" in str(err.value) and "wait for it to finish" in str(err.value)


def test_the_lock_goes_with_its_process_however_it_ends(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    code = ("import os, sys; from pathlib import Path; from pluto_fs import home_lock; from pluto_fs.home import Home\n"
            f"with home_lock.hold(Home(Path({str(home.path)!r})), 'mount', Path('/m')):\n"
            "    print('locked', flush=True); sys.stdin.read(1); os._exit(9)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        assert home_lock.holder(home)["pid"] == proc.pid
        proc.kill()  # kill -9: no cleanup runs
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert home_lock.holder(home) is None
    with home_lock.hold(home, "mount"):
        pass
