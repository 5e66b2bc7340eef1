"""The storage exchange seen from the mount: refuse a write (ENOSPC) at once when it can never upload."""

from __future__ import annotations

import time
from collections.abc import Callable

from pluto_fs.errors import QuotaExceeded

EXACT_AFTER = 1.0  # seconds an upper bound of the pending bytes is trusted before it is summed again


class Quota:
    """The allowance the coordinator grants and what waits locally to use it.

    `expansion` is the erasure code's n/k: pending local bytes count at their
    stored cost, so the check errs on the side of refusing a little early
    rather than accepting data that can never be uploaded.
    """

    def __init__(self, expansion: float = 1.0) -> None:
        self.expansion = expansion
        self.allowance: tuple[int, int] | None = None  # (allowed, used) raw bytes, once known
        # An upper bound of the pending bytes `check` counts, and when it was last exact:
        # summing every dirty file on every write made writes O(dirty files) while peers are away.
        self._pending_bound: int | None = None
        self._pending_exact_at = 0.0

    def set_allowance(self, allowed: int, used: int) -> None:
        """The coordinator's latest figures (raw bytes allowed and used)."""
        self.allowance = (allowed, used)

    def pending_grew(self, size: int) -> None:
        """`size` more bytes wait locally (a file became dirty, or was replayed from the journal)."""
        if self._pending_bound is not None:
            self._pending_bound += size

    def check(self, growth: int, pending_exact: Callable[[], int]) -> None:
        """Raise QuotaExceeded if the allowance cannot take `growth` more bytes.

        `pending_exact` sums the bytes waiting locally; it is called only when
        the cheap upper bound cannot decide.
        """
        if growth <= 0 or self.allowance is None:
            return
        allowed, used = self.allowance
        pending = self._pending_bound
        now = time.monotonic()
        # The bound only ever over-counts (uploads, truncates and deletions lower the true figure),
        # so it may accept on its own; a refusal, or a stale bound, is re-checked exactly.
        if pending is None or now - self._pending_exact_at > EXACT_AFTER \
                or used + (pending + growth) * self.expansion > allowed:
            pending = pending_exact()
            self._pending_exact_at = now
        if used + (pending + growth) * self.expansion > allowed:
            raise QuotaExceeded(
                f"storage exchange: {used} of {allowed} bytes used; offer more space (pluto serve --owner) "
                "or delete files"
            )
        self._pending_bound = pending + growth
