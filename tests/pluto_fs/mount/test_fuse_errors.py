"""FUSE handlers answer an errno, whatever they raise (pluto_fs/mount/fuse_errors.py).

pyfuse3 ends `pyfuse3.main()` (the whole mount) on any exception that is not
a FUSEError, so an unexpected one must become EIO and one log line.
"""

from __future__ import annotations

import errno
import inspect
import logging
import sqlite3
from typing import Any

import pyfuse3
import pytest
import trio

from pluto_fs.errors import NotEnoughPeers, PlutoError, QuotaExceeded
from pluto_fs.mount.fuse_errors import fuse_errors, never_raises
from pluto_fs.mount.fuse_ops import PlutoOperations


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


class _Unprintable(PlutoError):
    def __str__(self) -> str:
        raise RuntimeError("cannot describe this error")


def test_an_error_that_cannot_even_be_described_is_still_eio(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pluto_fs.mount.fuse_errors"):
        assert _answer(ExceptionGroup("nursery", [NotEnoughPeers("x"), _Unprintable()])) == errno.EIO
        assert _answer(ExceptionGroup("nursery", [OSError(errno.EIO, "x"), _Unprintable()]), local=True) == errno.EIO
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]


class _BrokenModel:
    """A model in which everything is a bug: any attribute the handlers touch raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"model.{name}: a bug")


def _dummy(param: inspect.Parameter) -> Any:
    """An argument of the right kind for a pyfuse3 handler parameter (the values do not matter: nothing works)."""
    if param.name == "attr":
        return pyfuse3.EntryAttributes()
    if param.name == "fields":
        return pyfuse3.SetattrFields()
    if param.name == "inode_list":
        return [(1, 1)]
    if param.name in ("ctx", "token"):
        return None
    if param.name in ("name", "name_old", "name_new", "new_name", "target", "buf", "value"):
        return b"x"
    return 1


HANDLERS = sorted(name for name, fn in vars(PlutoOperations).items()
                  if name in vars(pyfuse3.Operations) and inspect.iscoroutinefunction(fn))


def test_the_mount_covers_the_handlers_pyfuse3_calls() -> None:
    assert {"lookup", "getattr", "read", "write", "create", "rename", "fsync", "release", "statfs"} <= set(HANDLERS)


def _call_with_a_broken_model(
    name: str, caplog: pytest.LogCaptureFixture
) -> tuple[int | None, list[logging.LogRecord]]:
    """Call the real handler `name` on a model where everything is a bug: (errno answered or None, log records).

    Anything but a FUSEError (or a normal return) escaping here would end
    `pyfuse3.main()`, and the mount with it: that fails the test at once.
    """
    ops = PlutoOperations(_BrokenModel(), _BrokenModel(), op_timeout=5.0)  # type: ignore[arg-type]
    handler = getattr(ops, name)
    params = inspect.signature(handler).parameters.values()
    args = [_dummy(p) for p in params if p.default is inspect.Parameter.empty]
    answer: list[int] = []

    async def call() -> None:
        try:
            await handler(*args)
        except pyfuse3.FUSEError as exc:
            answer.append(exc.errno)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pluto_fs.mount.fuse_errors"):
        trio.run(call)
    return (answer[0] if answer else None), list(caplog.records)


@pytest.mark.parametrize("name", HANDLERS)
def test_every_handler_of_the_mount_answers_a_bug_with_eio_and_one_logged_traceback(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    code, records = _call_with_a_broken_model(name, caplog)
    if records:  # the handler ran into the bug (some answer first: a bad handle, an unsupported call)
        assert [(r.levelno, r.exc_info is not None) for r in records] == [(logging.ERROR, True)]
        assert code in (errno.EIO, None)  # None: a handler with no error reply (release, forget) only logs
        assert code == errno.EIO or name in ("forget", "release", "releasedir")


def test_the_handlers_that_use_the_model_do_run_into_the_bug(caplog: pytest.LogCaptureFixture) -> None:
    for name in ("lookup", "getattr", "setattr", "mkdir", "rmdir", "unlink", "rename", "create", "open",
                 "read", "write", "fsync", "opendir", "statfs", "forget"):
        _, records = _call_with_a_broken_model(name, caplog)
        assert records, f"{name} never reached the model"
