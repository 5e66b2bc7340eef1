"""Background loops that never die: every failure is retried with backoff, logged once, and counted.

The mount's loops (write-back, journal replay, audit, storage-exchange
figures, share poll, status file) run for as long as the mount does. trio
nurseries raise their failures as exception groups, so a loop that caught
only plain errors died of the first folder publish that failed, and took the
mount with it. The rule here:

- every Exception, plain or inside (nested) groups, is caught; trio's
  Cancelled and KeyboardInterrupt are not, so shutting down still works;
- expected failures (network, peers, quota, local disk full, SQLite errors)
  are logged as one warning line; anything else is a bug, logged once with
  its traceback; the loop goes on either way, after a backoff;
- a failure is logged when it differs from the last one logged (figures in
  the message aside: "2 of 5" and "1 of 5" are the same news), not every
  round: a mount retrying for an hour writes a few lines, not thousands;
- the current run of failures (count, since when, the last error) is kept
  for the status file, so `pluto status` says what is being retried.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from cryptree.errors import CryptreeError
from pluto_fs.errors import PlutoError
from transport.errors import TransportError

log = logging.getLogger(__name__)

# Failures a loop expects now and then and simply retries (no traceback in the log).
EXPECTED: tuple[type[BaseException], ...] = (
    PlutoError, TransportError, CryptreeError, OSError, sqlite3.Error, trio.TooSlowError,
)
_FIGURES = re.compile(r"\d+(\.\d+)?")


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The errors inside `exc`, nested exception groups flattened, in order; a plain error is its own leaf."""
    if isinstance(exc, BaseExceptionGroup):
        leaves: list[BaseException] = []
        for inner in exc.exceptions:
            leaves.extend(leaf_errors(inner))
        return leaves
    return [exc]


def describe(errors: list[BaseException]) -> str:
    """One line for people: the first distinct messages, and how many more there were."""
    texts: list[str] = []
    for e in errors:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if text not in texts:
            texts.append(text)
    line = "; ".join(texts[:2])
    if len(texts) > 2:
        line += f" (and {len(texts) - 2} more)"
    return line


@dataclass
class Retrying:
    """The failures of one background loop since it last succeeded."""

    name: str  # as people read it: "write-back"
    base_delay: float = 1.0  # first backoff, doubled after every failure in a row
    max_delay: float = 10.0
    clock: Callable[[], float] = time.time  # wall clock for `since` (status shows it as a time of day)
    count: int = 0  # attempts failed in a row
    since: float | None = None  # wall-clock time of the first of them
    last: str = ""  # the last failure, one line
    _logged: str | None = None  # the last failure logged, figures blanked out

    def failed(self, exc: BaseException) -> None:
        """Record a failed attempt (plain error or group) and log it if it is news."""
        errors = leaf_errors(exc)
        text = describe(errors)
        kinds = ",".join(sorted({type(e).__name__ for e in errors}))
        if self.count == 0:
            self.since = self.clock()
        self.count += 1
        self.last = text
        unexpected = [e for e in errors if not isinstance(e, EXPECTED)]
        news = kinds + ":" + _FIGURES.sub("#", text)
        if news == self._logged:
            return
        self._logged = news
        attempt = f"attempt {self.count}" if self.count > 1 else "first attempt"
        if unexpected:
            log.error("%s hit an unexpected error (%s; a bug, please report it); will keep trying",
                      self.name, attempt, exc_info=unexpected[0])
        else:
            log.warning("%s will retry (%s): %s", self.name, attempt, text)

    def succeeded(self) -> None:
        """An attempt worked: the run of failures is over."""
        if self.count:
            log.warning("%s works again after %d failed attempts", self.name, self.count)
        self.count, self.since, self.last, self._logged = 0, None, "", None

    def delay(self) -> float:
        """Seconds to wait before the next attempt (exponential backoff, capped)."""
        if self.count == 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** min(self.count - 1, 30))

    def as_status(self) -> dict | None:
        """{count, since, last} while failing (what `pluto status` shows), else None."""
        if self.count == 0:
            return None
        return {"count": self.count, "since": self.since, "last": self.last}

    async def attempt(self, fn: Callable[[], Awaitable[object]]) -> bool:
        """Run one attempt of the loop's work: True if it succeeded, False if it failed (recorded).

        Cancellation and other BaseExceptions that are not errors (KeyboardInterrupt)
        propagate; errors mixed with them in a group are recorded first.
        """
        try:
            await fn()
        except Exception as exc:  # an ExceptionGroup of errors is an Exception too
            self.failed(exc)
            return False
        except BaseExceptionGroup as group:
            errors, rest = group.split(Exception)
            if errors is not None:
                self.failed(errors)
            if rest is not None:
                raise rest from None
            return False  # pragma: no cover - split of a BaseExceptionGroup always leaves a rest
        self.succeeded()
        return True

    async def backoff(self) -> None:
        """Sleep the current backoff delay."""
        await trio.sleep(self.delay())


@dataclass
class Problems:
    """Every background loop's `Retrying`, by key, for the status file."""

    loops: dict[str, Retrying] = field(default_factory=dict)

    def loop(self, key: str, name: str, **kwargs: float) -> Retrying:
        """The `Retrying` of loop `key` (created on first use)."""
        if key not in self.loops:
            self.loops[key] = Retrying(name, **kwargs)  # type: ignore[arg-type]
        return self.loops[key]

    def as_status(self) -> dict[str, dict]:
        """{key: {name, count, since, last}} for the loops failing right now."""
        out = {}
        for key, r in self.loops.items():
            s = r.as_status()
            if s is not None:
                out[key] = {"name": r.name, **s}
        return out
