"""The FUSE error policy: every handler answers data or an errno, never an exception pyfuse3 does not expect.

pyfuse3 ends `pyfuse3.main()`, and with it the mount ("Transport endpoint is
not connected"), on any exception from a handler that is not a FUSEError. So
each handler is wrapped: expected failures map to their errno (QuotaExceeded
to ENOSPC, a timeout to ETIMEDOUT, network and peer errors to EIO, OSError to
its own errno, a journal that cannot record the change to EIO); a group of
such errors (concurrent work inside one operation) maps like its first; and
anything else is a bug: EIO and one log line with its traceback. That last
clause never raises itself, so no exception from a handler reaches pyfuse3
(tests/pluto_fs/mount/test_fuse_errors.py calls every handler of the mount
with a broken model to check it).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from cryptree.errors import CryptreeError
from pluto_fs.errors import PlutoError, QuotaExceeded
from pluto_fs.mount.retrying import EXPECTED, describe, leaf_errors
from transport.errors import TransportError

log = logging.getLogger(__name__)

T = TypeVar("T")


def fuse_errors(
    fn: Callable[..., Awaitable[T]], bounded: bool = True, local: bool = False
) -> Callable[..., Awaitable[T]]:
    """Turn every failure into an errno for the kernel (and a log line for people).

    `bounded` operations fail after the mount's --timeout as a whole. fsync
    is not bounded as a whole: storing a large file takes as long as it
    takes, while every single network wait inside it is still bounded by the
    RPC timeouts, so a dead network still fails it. `local` operations never
    wait for the network: they skip the timeout's cancel scope, which costs
    more than a getattr itself.
    """

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any) -> T:
        try:
            if local:
                return await fn(self, *args)
            with trio.fail_after(self.op_timeout if bounded else math.inf):
                return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except QuotaExceeded as exc:
            log.warning("%s refused: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.ENOSPC) from None
        except trio.TooSlowError:
            log.warning("%s: no answer from the network within %g s", fn.__name__, self.op_timeout)
            raise pyfuse3.FUSEError(errno.ETIMEDOUT) from None
        except (PlutoError, CryptreeError, TransportError) as exc:
            log.warning("%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except sqlite3.Error as exc:
            # The journal could not record the change: say so rather than acknowledge it.
            log.error("%s failed: the local journal: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as exc:
            raise pyfuse3.FUSEError(_errno_of_unexpected(fn.__name__, exc)) from None

    return wrapper


def _errno_of_unexpected(op: str, exc: Exception) -> int:
    """The errno for an error `fuse_errors` has no clause for: a group's errors, or a bug (EIO).

    It never raises: it is the last thing between a handler and pyfuse3, so
    even an error that cannot be described (its `str()` fails) is EIO.
    """
    try:
        code = _errno_of_group(op, exc)
    except Exception:  # describing the error failed: a bug all the same
        code = None
    if code is not None:
        return code
    log.error("%s failed unexpectedly (a bug, please report it); answered EIO", op, exc_info=exc)
    return errno.EIO


def _errno_of_group(op: str, exc: Exception) -> int | None:
    """The errno of a group of ordinary errors (concurrent work inside the operation): its first one's; else None."""
    leaves = leaf_errors(exc)
    if not (isinstance(exc, BaseExceptionGroup) and leaves and all(isinstance(e, EXPECTED) for e in leaves)):
        return None
    first = leaves[0]
    if isinstance(first, QuotaExceeded):
        code = errno.ENOSPC
    elif isinstance(first, trio.TooSlowError):
        code = errno.ETIMEDOUT
    elif isinstance(first, OSError) and first.errno:
        code = first.errno
    else:
        code = errno.EIO
    log.warning("%s failed: %s", op, describe(leaves))
    return code


def never_raises(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """For handlers with no error reply (forget, release): log a failure instead of ending the mount."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any) -> None:
        try:
            await fn(self, *args)
        except Exception as exc:
            log.error("%s failed unexpectedly (a bug, please report it)", fn.__name__, exc_info=exc)

    return wrapper


local_op = functools.partial(fuse_errors, local=True)
