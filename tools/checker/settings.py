"""Every knob of a checker run and its default, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pluto_fs.home import Config


@dataclass
class Settings:
    """One run: what to do, for how long, and how patient to be with the processes."""

    seed: int = 1
    ops: int = 100_000  # planned operations per mount: the run ends at `ops` or `minutes`, whichever comes first
    mounts: int = 1
    peers: int = 5
    minutes: float = 2.0  # workload and nemesis time; setup and the final checks come on top
    aggressive: bool = False  # allow more than n-k peers down at once (never more than n-k lost)
    keep: Path | None = None  # keep grid stores, homes, logs and the report here
    op_timeout: float = 5.0  # `pluto mount --timeout`: a FUSE operation fails with ETIMEDOUT after this
    request_timeout: float = 2.0  # config.json: one network request, so runs move on while peers are frozen
    audit_interval: float = 20.0  # config.json: the mount's own background audit and repair
    unmount_wait: float = 120.0  # a clean unmount (uploads what is pending) may take this long
    repair_timeout: float = 90.0  # `pluto check --repair --now` between a mount kill and its remount
    probe_rounds: int = 3  # fresh processes that each list every folder (flip check)
    pace: float = 0.03  # seconds each worker waits between operations (they are fast; this keeps two cores usable)
    op_hang: float = 120.0  # an operation still running this long after the workload's end is a finding

    @property
    def fault_budget(self) -> int:
        """Peers that may be down or lost at once: n - k of the code every home uses."""
        config = Config()
        return config.n - config.k

    def check(self) -> str | None:
        """What is wrong with these settings, or None."""
        if self.mounts not in (1, 2):
            return "--mounts must be 1 or 2"
        if not Config().n <= self.peers <= 16:
            return f"--peers must be from {Config().n} (the code's n) to 16"
        if self.ops < 1 or self.minutes <= 0:
            return "--ops and --minutes must be positive"
        return None
