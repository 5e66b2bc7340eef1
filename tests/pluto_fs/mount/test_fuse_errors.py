"""FUSE handlers answer an errno, whatever they raise (pluto_fs/mount/fuse_errors.py).

pyfuse3 ends `pyfuse3.main()` (the whole mount) on any exception that is not
a FUSEError, so an unexpected one must become EIO and one log line.
"""

from __future__ import annotations

import errno
import logging
import sqlite3

import pyfuse3
import pytest
import trio

from pluto_fs.errors import NotEnoughPeers, QuotaExceeded
from pluto_fs.mount.fuse_errors import fuse_errors, never_raises


class _Ops:
    op_timeout = 5.0


def _answer(exc: BaseException, **kwargs: bool) -> int:
    async def handler(self: _Ops) -> None:
        raise exc

    handler.__name__ = "lookup"
    wrapped = fuse_errors(handler, **kwargs)
    with pytest.raises(pyfuse3.FUSEError) as err:
        trio.run(wrapped, _Ops())
    return err.value.errno


def test_a_bug_in_a_handler_is_eio_and_one_log_line_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pluto_fs.mount.fuse_errors"):
        assert _answer(KeyError("oops")) == errno.EIO
        assert _answer(AttributeError("x"), local=True) == errno.EIO
    assert len(caplog.records) == 2
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in caplog.records)
    assert "lookup failed unexpectedly" in caplog.records[0].getMessage()


def test_a_group_of_ordinary_errors_maps_like_its_first_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pluto_fs.mount.fuse_errors"):
        assert _answer(ExceptionGroup("nursery", [NotEnoughPeers("only 2 of 5")])) == errno.EIO
        assert _answer(ExceptionGroup("nursery", [QuotaExceeded("full")])) == errno.ENOSPC
        assert _answer(ExceptionGroup("nursery", [OSError(errno.ENOSPC, "No space")])) == errno.ENOSPC
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in caplog.records)


def test_plain_errors_keep_their_mapping() -> None:
    assert _answer(NotEnoughPeers("x")) == errno.EIO
    assert _answer(QuotaExceeded("x")) == errno.ENOSPC
    assert _answer(sqlite3.OperationalError("database or disk is full")) == errno.EIO
    assert _answer(OSError(errno.ENOSPC, "full")) == errno.ENOSPC


def test_handlers_without_an_error_reply_log_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    @never_raises
    async def release(self: _Ops, fh: int) -> None:
        raise RuntimeError(f"no handle {fh}")

    with caplog.at_level(logging.ERROR, logger="pluto_fs.mount.fuse_errors"):
        trio.run(release, _Ops(), 7)
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
