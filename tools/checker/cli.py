"""Command line: `python -m tools.checker --help` (from the repository root)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .run import EXIT_USAGE, run
from .settings import Settings


def build_parser() -> argparse.ArgumentParser:
    """The checker's argument parser."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m tools.checker",
        description="Fault-injection checker: random file and folder operations from one or two mounts while "
                    "peers are killed, frozen, wiped and restarted and mounts are killed; then checks from a fresh "
                    "home that nothing fsync acknowledged was lost or rolled back, no folder flips and no folder "
                    "is wedged. Exit 0: no violation; 1: violations (see the report); 2: bad usage; 3: the checker "
                    "itself could not run.")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the operations and faults (default {d.seed})")
    p.add_argument("--ops", type=int, default=d.ops, help=f"planned operations per mount (default {d.ops})")
    p.add_argument("--mounts", type=int, default=d.mounts, help="1, or 2 devices of one user (default 1)")
    p.add_argument("--peers", type=int, default=d.peers, help=f"storage peers (default {d.peers})")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help=f"workload and fault time; setup and final checks come on top (default {d.minutes:g})")
    p.add_argument("--aggressive", action="store_true",
                   help="let kills and freezes exceed n-k peers (wipes never do); errors are then expected, "
                        "silent loss still is not")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep stores, homes, logs, history and report in DIR (default: a temporary directory, "
                        "removed after a clean run, kept after a failing one)")
    p.add_argument("--probe-rounds", type=int, default=d.probe_rounds,
                   help=f"fresh processes that list every folder at the end (default {d.probe_rounds})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the report; return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0)
    settings = Settings(seed=args.seed, ops=args.ops, mounts=args.mounts, peers=args.peers, minutes=args.minutes,
                        aggressive=args.aggressive, keep=args.keep, probe_rounds=max(2, args.probe_rounds))
    problem = settings.check()
    if problem:
        print(f"checker: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # SIGTERM unwinds like Ctrl-C, so the teardown still thaws, kills and unmounts everything.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run(settings)
    except KeyboardInterrupt:  # run() has torn the cluster down on its way out
        print("checker: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    sys.stdout.write(result.text)
    if result.kept:
        print(f"history, logs and report: {result.directory}")
    return result.exit_code
