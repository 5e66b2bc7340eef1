"""Start a local grid — one coordinator and N storage peers as real processes.

Used by `pluto demo`, the test suite and the benchmarks. Every process binds
to 127.0.0.1; each prints a 'listening on HOST:PORT' line that we wait for,
so port 0 (a free port chosen by the kernel) works and nothing races.

Each process runs in a session of its own: Ctrl-C in a terminal sends SIGINT
to the whole foreground process group, and a grid in the launcher's group
died at once, before `pluto demo` could upload what was pending. The
launcher stops its grid itself (`stop`); with `die_with_parent` (the demo)
the kernel also sends SIGTERM to each process when the launcher dies, so a
killed demo leaves no grid behind.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pluto_fs.errors import PlutoError
from pluto_fs.store.packs import DEFAULT_N

if TYPE_CHECKING:
    from pluto_fs.home import Home

_LISTENING = re.compile(r"listening on (\S+?):(\d+)")


class GridError(PlutoError, RuntimeError):
    """A grid process did not start."""


@dataclass
class GridProcess:
    """One running pluto server process."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    address: str = ""
    peer_id: str = ""
    die_with_parent: bool = False

    @property
    def port(self) -> int:
        """The TCP port the process listens on."""
        return int(self.address.rsplit(":", 1)[1])

    def start(self, timeout: float = 20.0) -> None:
        """Start the process and wait for its 'listening on' line."""
        self.spawn()
        self.wait_listening(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (see `wait_listening`): several start at once."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=child_env(),
            start_new_session=True, preexec_fn=_parent_death_signal() if self.die_with_parent else None,
        )
        log.close()

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Wait for the spawned process's 'listening on' line; learn its address and peer id."""
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        line = b""
        assert self.proc.stdout is not None
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.kill()
                raise GridError(f"{self.name} did not start within {timeout:g} s; see {self.log_path}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise GridError(f"{self.name} exited at start (code {self.proc.wait()}); see {self.log_path}")
            line += chunk
        text = line.decode(errors="replace")
        m = _LISTENING.search(text)
        if not m:
            self.kill()
            raise GridError(f"{self.name} printed an unexpected first line: {text.strip()!r}")
        self.address = f"{m.group(1)}:{m.group(2)}"
        ids = re.search(r"peer (b[a-z2-7]+)", text)
        self.peer_id = ids.group(1) if ids else ""

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def request_stop(self) -> None:
        """SIGTERM without waiting (`stop` waits): several stop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL (a crash, as far as the process can tell)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _parent_death_signal():
    """A preexec_fn that makes the child get SIGTERM when this process ends (Linux prctl)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def child_env() -> dict[str, str]:
    """The environment for a pluto subprocess: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the checkout that holds pluto_fs/
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


async def wait_for_peers(home: Home, want: int, timeout: float = 30.0) -> None:
    """Until the coordinator offers `want` storage peers for placement to `home`, or `timeout` seconds pass.

    A grid just started has peers still registering; a mount that uploaded
    at once would find too few and report data as not stored.
    """
    import trio

    from transport.coordinator.client import CoordinatorClient
    from transport.protocol.pool import open_pool

    config = home.config()
    async with open_pool(home.device_key()) as pool:
        coordinator = CoordinatorClient.from_pool(pool, config.coordinator)
        with trio.move_on_after(timeout):
            while True:  # polled: the coordinator does not tell anyone when a peer registers
                if len(await coordinator.find_peers(want)) >= want:
                    return
                await trio.sleep(0.2)


def _pluto(*args: str) -> list[str]:
    return [sys.executable, "-m", "pluto_fs.cli.main", *args]


@dataclass
class LocalGrid:
    """A coordinator and N storage peers under one directory."""

    root: Path
    peers: int = DEFAULT_N  # one per fragment of the default code
    capacity: str = "2G"
    heartbeat: float = 1.0
    log_level: str = "info"
    audit_report_interval: float = 10.0
    owner: str | None = None  # device id whose storage-exchange allowance the peers raise
    grace: str = "1G"
    membership_grace: float | None = None  # seconds; None: the coordinator's default (72 h)
    die_with_parent: bool = False  # SIGTERM to every process when the one that started them dies
    coordinator: GridProcess | None = None
    storage: list[GridProcess] = field(default_factory=list)

    def start(self) -> LocalGrid:
        """Start the coordinator, then the peers; wait until all listen."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.coordinator = GridProcess(
            "coordinator",
            _pluto("--log-level", self.log_level, "coordinator", "--listen", "127.0.0.1:0",
                   "--data", str(self.root / "coordinator"), "--heartbeat", str(self.heartbeat),
                   "--audit-report-interval", str(self.audit_report_interval), "--grace", self.grace,
                   *(["--membership-grace", str(self.membership_grace)] if self.membership_grace else [])),
            self.root / "coordinator.log",
            die_with_parent=self.die_with_parent,
        )
        self.coordinator.start()
        # Started together and then waited for: each spends most of its start importing Python.
        self.storage = [self._peer_process(i, 0) for i in range(self.peers)]
        try:
            for peer in self.storage:
                peer.spawn()
            for peer in self.storage:
                peer.wait_listening()
        except BaseException:
            self.stop()  # no half-started grid left running
            raise
        return self

    def _peer_process(self, i: int, port: int) -> GridProcess:
        owner = ["--owner", self.owner] if self.owner else []
        return GridProcess(
            f"peer{i}",
            _pluto("--log-level", self.log_level, "serve", "--store", str(self.root / f"peer{i}"),
                   "--capacity", self.capacity, "--listen", f"127.0.0.1:{port}",
                   "--coordinator", self.coordinator.address, "--heartbeat", str(self.heartbeat), *owner),
            self.root / f"peer{i}.log",
            die_with_parent=self.die_with_parent,
        )

    def restart_peer(self, i: int) -> None:
        """Start storage peer `i` again on its old port and store (a reboot, after `stop` or `kill` of it)."""
        port = self.storage[i].port
        self.storage[i].stop()
        self.storage[i] = self._peer_process(i, port)
        self.storage[i].start()

    def peer_store(self, i: int) -> Path:
        """The directory storage peer `i` keeps its key, fragments and slots in."""
        return self.root / f"peer{i}"

    def freeze_peer(self, i: int) -> None:
        """SIGSTOP storage peer `i`: it keeps its connections open and never answers (a hung machine)."""
        if self.storage[i].alive():
            self.storage[i].proc.send_signal(signal.SIGSTOP)

    def thaw_peer(self, i: int) -> None:
        """SIGCONT storage peer `i` (harmless when it is not frozen)."""
        if self.storage[i].alive():
            self.storage[i].proc.send_signal(signal.SIGCONT)

    def wipe_peer(self, i: int) -> None:
        """A peer whose disk was lost: kill -9 it, delete everything it stored but its key
        (peer.key, so it keeps its identity), and start it again on its port."""
        import shutil

        self.storage[i].kill()
        for entry in self.peer_store(i).iterdir():
            if entry.name != "peer.key":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self.restart_peer(i)

    def restart_all(self) -> None:
        """Stop every process and start it again on the same port and state."""
        self.stop()
        coord_port = self.coordinator.port
        self.coordinator.argv[self.coordinator.argv.index("--listen") + 1] = f"127.0.0.1:{coord_port}"
        self.coordinator.start()
        self.storage = [self._peer_process(i, p.port) for i, p in enumerate(self.storage)]
        for peer in self.storage:
            peer.spawn()
        for peer in self.storage:
            peer.wait_listening()

    def stop(self) -> None:
        """Stop every process (peers first)."""
        for p in self.storage:
            p.request_stop()
        for p in self.storage:
            p.stop()
        if self.coordinator is not None:
            self.coordinator.stop()

    def __enter__(self) -> LocalGrid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a local grid in the foreground until Ctrl-C (`python -m pluto_fs.grid.localgrid`)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m pluto_fs.grid.localgrid", description=main.__doc__)
    parser.add_argument("--root", type=Path, help="state directory (default: a new temporary one)")
    parser.add_argument("--peers", type=int, default=DEFAULT_N,
                        help=f"number of storage peers (default {DEFAULT_N}: one per fragment of the default code)")
    args = parser.parse_args(argv)
    if not 1 <= args.peers <= 64:
        print("localgrid: --peers must be from 1 to 64", file=sys.stderr)
        return 2
    root = args.root or Path(tempfile.mkdtemp(prefix="pluto-grid-"))
    grid = LocalGrid(root, peers=args.peers)
    try:
        grid.start()
        print(f"coordinator  {grid.coordinator.address}")
        for p in grid.storage:
            print(f"{p.name:<12} {p.address}  {p.peer_id}")
        print(f"state and logs in {root}; Ctrl-C stops the grid", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as cleanly as Ctrl-C
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the grid", flush=True)
    except GridError as exc:
        print(f"localgrid: {exc}", file=sys.stderr)
        return 1
    finally:
        grid.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
