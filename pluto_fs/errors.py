"""Errors of the product layer. Each message is one line that says what to do next."""


class PlutoError(Exception):
    """Base class for failures a person should read."""


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
