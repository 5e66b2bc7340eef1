"""Fault-injection checker for pluto, in the spirit of Jepsen.

Random file and folder operations from one or two mounts of one user while a
nemesis kills, freezes, restarts and wipes storage peers and kill -9s
mounts; an oracle records what fsync acknowledged, and final checks from a
fresh home restored from the seed find lost or rolled-back states, folders
that flip between reads and folders that can no longer be written.

Run it from the repository root: `python -m tools.checker --help`; how to
read a failure: tools/checker/README.md.
"""

from tools.checker.run import Result, run
from tools.checker.settings import Settings

__all__ = ["Result", "Settings", "run"]
