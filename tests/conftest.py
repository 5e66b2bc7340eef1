"""Shared test helpers: run trio code from plain pytest functions."""

from __future__ import annotations

import functools
import inspect

import pytest
import trio


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests under trio.run (no plugin needed)."""
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    trio.run(functools.partial(fn, **args))
    return True


@pytest.fixture(scope="session")
def pluto_mount(tmp_path_factory: pytest.TempPathFactory):
    """One real mount (5 peer processes + a `pluto mount -f` process) shared by a session's POSIX suites."""
    from pluto_fs.grid.testing import start_mounted_volume

    vol = start_mounted_volume(tmp_path_factory.mktemp("mount"))
    try:
        yield vol
    finally:
        vol.close()
