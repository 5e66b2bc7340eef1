"""The run's history: every operation, fault and finding, timestamped, in the order they happened.

Operations and faults come from several threads (one worker per mount, the
nemesis, the supervisor); each record gets its time from one monotonic clock
started with the run, under one lock, so the order in the file is the order
of the events. The history is what a failure report quotes: it shows what
actually happened, which the seed alone cannot (process timing is not
deterministic).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Finding:
    """One violation (or a note, when `violation` is False) found by the checker."""

    kind: str  # lost-ack, rollback, resurrected, unreadable, corrupt, flip, wedged, view, mount-died, unmount, ...
    path: str | None  # "" is the root; None when the finding is not about one path (a mount that died)
    expected: str
    found: str
    detail: str = ""
    violation: bool = True
    t: float = 0.0
    seq: int = 0  # how many events the history held when it was found: the report quotes only those

    def headline(self) -> str:
        """One line: kind, path, expected and found."""
        where = f" /{self.path}" if self.path is not None else ""
        return f"{self.kind}{where}: expected {self.expected}; found {self.found}"


class History:
    """A thread-safe, append-only log of the run, mirrored to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.findings: list[Finding] = []
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.start

    def record(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Append an event of `type_` (op, fault, note, phase) stamped with the time now; return it."""
        with self._lock:
            event = {"t": round(self.now(), 3), "type": type_, **fields}
            self.events.append(event)
            self._file.write(json.dumps(event, default=_jsonable) + "\n")
            self._file.flush()
            return event

    def find(self, finding: Finding) -> None:
        """Record a finding (stamped now) in the findings list and the log."""
        finding.t = round(self.now(), 3)
        with self._lock:
            finding.seq = len(self.events)
            self.findings.append(finding)
        self.record("finding", **asdict(finding))

    def snapshot(self) -> list[dict[str, Any]]:
        """A copy of the events so far."""
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        """Close the log file."""
        with self._lock:
            self._file.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)
