"""Errors of the product layer (pluto_fs). Each message is one line that says what to do next.

Policy: every error pluto_fs raises on purpose derives from `PlutoError`, so
one `except PlutoError` separates "pluto says no" from a bug. Each package
may add its own base below it (`ErasureError`, `PackError`, `GridError`,
`JournalDamaged`, ...) for callers that want only that package's failures.
The layers below keep their own roots: `cryptree.errors.CryptreeError`
(formats, verification of what was opened) and `transport.errors.TransportError`
(the network, and what a remote said); pluto_fs maps them where a person
needs to read them (pluto_fs/cli/main.py, pluto_fs/mount/fuse_errors.py).
"""


class PlutoError(Exception):
    """Base class of every error pluto_fs raises on purpose: a failure a person should read."""


class NotEnoughPeers(PlutoError):
    """Too few storage peers answered to store or rebuild something."""


class NotFound(PlutoError):
    """No such file or directory in the volume."""


class HomeError(PlutoError):
    """The state directory is missing, incomplete or unusable."""


class ConflictError(PlutoError):
    """Someone else changed the same directory at the same time."""


class QuotaExceeded(PlutoError):
    """The storage exchange (or a peer's quota) does not allow storing more."""


class DamagedError(PlutoError):
    """Stored data failed verification here, on this machine, everywhere it was found."""


class DamagedFragment(DamagedError):
    """One fragment a peer sent failed a check made here (its length does not fit the pack's layout).

    Local verification, not something the peer said: the fragment is
    dropped, the peer's reputation takes the blame, and the read goes on
    with the other columns.
    """
