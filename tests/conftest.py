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
