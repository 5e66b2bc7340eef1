"""The `pluto` command line.

Conventions: `--help` on every command; exit 0 on success, 1 when the
operation failed, 2 for wrong usage or bad input; errors are one line on
stderr that say what to do next, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
from pathlib import Path

import trio

from pluto_fs.errors import HomeError, PlutoError
from pluto_fs.units import format_size, parse_size
from transport.errors import TransportError
from transport.protocol.dial import parse_address

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(PlutoError):
    """Bad input from the person at the keyboard: exit 2 with a one-line message."""


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _listen_address(text: str) -> str:
    try:
        parse_address(text, allow_any_port=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError("seconds must be more than 0 and at most 86400")
    return value


def _long_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 365 * 86400:
        raise argparse.ArgumentTypeError("seconds must be more than 0 and at most 31536000 (365 days)")
    return value


async def _until_signal(fn, *args) -> None:
    """Run `fn(*args)` until it returns or SIGINT/SIGTERM arrives, then stop cleanly."""
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        await fn(*args)
        nursery.cancel_scope.cancel()


def _owner(text: str | None) -> bytes | None:
    if text is None:
        return None
    from transport.protocol.peer_id import parse_peer_id

    try:
        return parse_peer_id(text)
    except ValueError as exc:
        raise UsageError(f"--owner: {exc}; use the device id `pluto status` prints") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """`pluto serve`: run a storage peer."""
    from pluto_fs.malloc_tuning import tune_malloc
    from transport.peer.service import PeerConfig, run_storage_peer

    tune_malloc()  # the peer, too, frees fragment-sized buffers from worker threads
    host, port = parse_address(args.listen, allow_any_port=True)
    cfg = PeerConfig(
        store_dir=Path(args.store),
        capacity=args.capacity,
        host=host,
        port=port,
        coordinator=args.coordinator,
        heartbeat_interval=args.heartbeat,
        advertise=args.advertise,
        client_quota=args.client_quota,
        handshake_timeout=args.handshake_timeout,
        owner=_owner(args.owner),
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            peer_id, address = await nursery.start(run_storage_peer, cfg)
            print(
                f"pluto storage peer {peer_id} listening on {address}, "
                f"offering {format_size(cfg.capacity)} from {cfg.store_dir}",
                flush=True,
            )

    trio.run(_until_signal, main)
    return EXIT_OK


def cmd_coordinator(args: argparse.Namespace) -> int:
    """`pluto coordinator`: run the rendezvous server."""
    from transport.coordinator.service import CoordinatorLimits, run_coordinator

    host, port = parse_address(args.listen, allow_any_port=True)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            limits = CoordinatorLimits(audit_report_interval=args.audit_report_interval, exchange_grace=args.grace,
                                       membership_grace=args.membership_grace)
            started = await nursery.start(
                lambda task_status: run_coordinator(
                    Path(args.data), host, port, heartbeat_interval=args.heartbeat, limits=limits,
                    task_status=task_status,
                )
            )
            print(f"pluto coordinator listening on {_describe(started)}, state in {args.data}", flush=True)

    trio.run(_until_signal, main)
    return EXIT_OK


def _describe(started: object) -> str:
    if isinstance(started, tuple) and len(started) == 2 and isinstance(started[1], int):
        return f"{started[0]}:{started[1]}"
    return str(started)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every `pluto` command."""
    parser = argparse.ArgumentParser(
        prog="pluto", description="pluto: an encrypted, erasure-coded filesystem on other people's disks."
    )
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="donate disk space: run a storage peer")
    p.add_argument("--store", required=True, metavar="DIR", help="directory that holds the donated data")
    p.add_argument("--capacity", required=True, type=_size, metavar="SIZE", help="space to offer, e.g. 50G")
    p.add_argument("--listen", required=True, type=_listen_address, metavar="HOST:PORT", help="address to listen on")
    p.add_argument("--coordinator", type=_address, metavar="HOST:PORT", help="coordinator to register with")
    p.add_argument("--advertise", type=_address, metavar="HOST:PORT",
                   help="address clients should dial, if not --listen")
    p.add_argument("--heartbeat", type=_seconds, default=30.0, metavar="SECONDS",
                   help="heartbeat interval (default 30)")
    p.add_argument("--client-quota", type=_size, metavar="SIZE", help="most one client may store (default: capacity)")
    p.add_argument("--owner", metavar="DEVICE_ID",
                   help="device id of the user whose storage this peer earns (see `pluto status`)")
    p.add_argument("--handshake-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="drop connections that do not finish the handshake in time (default 10)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("coordinator", help="run the coordinator (peer registry, user directory, mailboxes)")
    p.add_argument("--listen", required=True, type=_listen_address, metavar="HOST:PORT", help="address to listen on")
    p.add_argument("--data", required=True, metavar="DIR", help="directory for the coordinator's state")
    p.add_argument("--heartbeat", type=_seconds, default=30.0, metavar="SECONDS",
                   help="expected peer heartbeat interval")
    p.add_argument("--grace", type=_size, default=1 << 30, metavar="SIZE",
                   help="raw bytes a user may store before offering space of their own (default 1G)")
    p.add_argument("--audit-report-interval", type=_seconds, default=10.0, metavar="SECONDS",
                   help="count at most one audit report per client and peer in this interval (default 10)")
    p.add_argument("--membership-grace", type=_long_seconds, default=72 * 3600.0, metavar="SECONDS",
                   help="a peer silent longer than this leaves the membership and folders move off it "
                        "(default 259200: 72 h)")
    p.set_defaults(func=cmd_coordinator)

    from pluto_fs.cli.volume import add_commands

    add_commands(sub, _address, "state directory (default: $PLUTO_HOME or ~/.pluto)")
    from pluto_fs.cli.mount import add_commands as add_mount_commands

    add_mount_commands(sub, _address, "state directory (default: $PLUTO_HOME or ~/.pluto)")
    from pluto_fs.cli.social import add_commands as add_social_commands

    add_social_commands(sub, "state directory (default: $PLUTO_HOME or ~/.pluto)")
    from pluto_fs.writeback.salvage import add_commands as add_salvage_commands

    add_salvage_commands(sub, "state directory (default: $PLUTO_HOME or ~/.pluto)")
    return parser


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The errors inside nested task groups, each distinct one once (same type and message: once), in order."""
    leaves: dict[tuple[type, str], BaseException] = {}

    def walk(g: BaseExceptionGroup) -> None:
        for exc in g.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.setdefault((type(exc), str(exc)), exc)

    walk(group)
    return list(leaves.values())


def _report(exc: Exception | KeyboardInterrupt) -> int:
    """Print one line on stderr for `exc` (nothing for Ctrl-C) and return the exit code it stands for."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, (UsageError, HomeError)):
        print(f"pluto: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, PlutoError):
        print(f"pluto: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, TransportError):
        print(f"pluto: network error: {exc}; check that the coordinator and peers are running", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, OSError):
        print(f"pluto: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, sqlite3.Error):  # a local database (pack log, journal) that cannot be used
        print(f"pluto: a local database in the home failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # A bug: still one line; the traceback with --log-level debug.
    logging.getLogger("pluto").debug("unexpected error", exc_info=exc)
    print(f"pluto: unexpected error (a bug, please report it): {type(exc).__name__}: {exc}; "
          "run with --log-level debug for details", file=sys.stderr)
    return EXIT_FAILED


def _report_group(group: BaseExceptionGroup) -> int:
    """One line per distinct error of a task group; the exit code of the first.

    Concurrent work (uploads to several peers, several folders) fails in
    several ways at once, and each way may need its own fix. Anything that
    is not an error to report (SystemExit, a cancellation) goes on as it is.
    """
    leaves = _leaves(group)
    for exc in leaves:
        if not isinstance(exc, (Exception, KeyboardInterrupt)):
            raise exc
    codes = [_report(exc) for exc in leaves]  # type: ignore[arg-type]
    return codes[0] if codes else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pluto` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BaseExceptionGroup as group:
        return _report_group(group)
    except (Exception, KeyboardInterrupt) as exc:
        return _report(exc)

if __name__ == "__main__":
    sys.exit(main())
