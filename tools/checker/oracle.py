"""The oracle: for every path, what the mount may show now and what the network may hold.

A path's *state* is ABSENT, DIR (a folder), or a file's content written as
the tuple of operation ids whose segments it holds (workload.decode reads it
back from bytes; () is an empty file). For each path the oracle keeps two
sets of states:

- `view`: what the mount itself may show right now. A successful operation
  sets it to its result; a failed one (its effect is uncertain) adds its
  possible results; reading or listing through the mount is an observation
  that must fall in the set (else a *view* finding: the mount contradicts
  its own successful system calls) and then narrows it to what was seen.
- `durable`: what a fresh machine may find on the network. Every state an
  operation may produce is added when the operation *starts* (it may take
  effect even if it then fails, or the mount dies); an acknowledgement
  narrows it: fsync of a file to the content it acknowledged, fsync of a
  folder to "present" / ABSENT for each of this mount's names in it. The
  final check demands the state found from a fresh home to be in `durable`.

So the final rule is: the state found is the last acknowledged state or one
written after it (never an older one, never missing when acknowledged
present, never present when its acknowledged removal is the latest word).
The README states the rules in full.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .history import Finding, History
from .workload import Namespace

ABSENT = "absent"
DIR = "dir"
ANY_FILE = "file?"  # a file with content the oracle cannot pin down (only after a view finding)

State = str | tuple[str, ...]


def render(state: State) -> str:
    """A state as the report shows it."""
    if state == ABSENT:
        return "absent"
    if state == DIR:
        return "folder"
    if state == ANY_FILE:
        return "a file (any content)"
    if state == ():
        return "empty file"
    return "file[" + "+".join(state) + "]"


def render_set(states: Iterable[State]) -> str:
    """A set of states, sorted, as 'a | b'."""
    return " | ".join(sorted(render(s) for s in states)) or "(nothing)"


def classify(found: State, expected: set[State]) -> str:
    """The finding kind for `found` outside `expected`: lost, resurrected or rollback (or unreadable or
    corrupt, for the final check's read errors)."""
    if isinstance(found, str) and found.startswith(("unreadable", "corrupt")):
        return found.split(":")[0]
    if found == ABSENT:
        return "lost"
    if expected == {ABSENT}:
        return "resurrected"
    return "rollback"


def matches(found: State, states: set[State]) -> bool:
    """True if `found` is one of `states` (a file matches the wildcard ANY_FILE)."""
    return found in states or (isinstance(found, tuple) and ANY_FILE in states)


class Oracle:
    """Per-path view and durable sets for every tracked path; safe to call from several threads."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.view: dict[str, set[State]] = {}
        self.durable: dict[str, set[State]] = {}
        self.owner: dict[str, int | None] = {}  # mount that writes the path; None for setup paths
        self.folders: set[str] = set()  # tracked paths that are folders (the others are files)
        self._lock = threading.Lock()

    def track(self, paths: Iterable[str], owner: int | None, initial: State = ABSENT) -> None:
        """Start tracking `paths` (owned by mount `owner`), all in state `initial`."""
        with self._lock:
            for p in paths:
                self.view[p] = {initial}
                self.durable[p] = {initial}
                self.owner[p] = owner
                if initial == DIR:
                    self.folders.add(p)

    def track_namespace(self, ns: Namespace) -> None:
        """Track every path mount `ns.mount` owns, all absent at the start."""
        self.track(ns.paths(), ns.mount)
        with self._lock:
            self.folders.update(ns.subdirs())

    def _present(self, path: str) -> State:
        """`path` present, with what it holds unknown: a folder, or a file of any content."""
        return DIR if path in self.folders else ANY_FILE

    # ---- writes -----------------------------------------------------------------------

    def begin(self, path: str, states: Iterable[State]) -> None:
        """An operation that may leave `path` in any of `states` is about to run."""
        with self._lock:
            self.durable[path] |= set(states)

    def end(self, path: str, states: Iterable[State], ok: bool) -> None:
        """The operation ended: with `ok` the mount now shows one of `states`, else maybe still the old."""
        with self._lock:
            if ok:
                self.view[path] = set(states)
            else:
                self.view[path] |= set(states)

    def moved(self, src: str) -> set[State]:
        """What a rename of `src` may carry to its destination: any file content `src` may hold,
        locally or on the network (a file still uploading is published with its previous content)."""
        with self._lock:
            return {s for s in self.view[src] | self.durable[src] if s not in (ABSENT, DIR)}

    def view_of(self, path: str) -> set[State]:
        """A copy of what the mount may show at `path` now."""
        with self._lock:
            return set(self.view[path])

    # ---- observations -----------------------------------------------------------------

    def observe(self, op_id: str, path: str, state: State) -> None:
        """The mount showed `path` in `state`: it must be a state the mount may show."""
        with self._lock:
            expected, durable = set(self.view[path]), set(self.durable[path])
            self.view[path] = {state}
        if not matches(state, expected):
            self._finding(op_id, path, expected, durable, state)

    def observe_listed(self, op_id: str, path: str, listed: bool) -> None:
        """A listing of `path`'s folder showed it (`listed`) or not; the kind is not looked at."""
        if not listed:
            self.observe(op_id, path, ABSENT)
            return
        with self._lock:
            expected, durable = set(self.view[path]), set(self.durable[path])
            present = {s for s in expected if s != ABSENT}
            self.view[path] = present or {self._present(path)}
        if not present:
            self._finding(op_id, path, expected, durable, None)

    def _finding(self, op_id: str, path: str, view: set[State], durable: set[State], seen: State | None) -> None:
        """A state outside what the network may hold breaks an acknowledgement, whoever sees it; one only
        outside the mount's own view means the mount lost or was overwritten in a change it had accepted.
        `seen` None: listed, so present, with what it holds not looked at."""
        found = "present" if seen is None else render(seen)
        if matches(seen, durable) if seen is not None else any(s != ABSENT for s in durable):
            self.history.find(Finding(
                "view", path, render_set(view), found,
                f"op {op_id}: the mount shows a state none of its own successful operations leaves there "
                "(its journal lost a change, or another writer's publish overwrote it)"))
        else:
            self.history.find(Finding(
                classify(self._present(path) if seen is None else seen, durable), path,
                render_set(durable), found, f"op {op_id} saw it through the mount during the run"))

    # ---- acknowledgements -------------------------------------------------------------

    def ack(self, op_id: str, path: str, state: State) -> None:
        """`state` of `path` was acknowledged (fsync returned 0): from now on nothing older may show."""
        with self._lock:
            self.durable[path] = {state}
            self.view[path] = {state}
        self.history.record("ack", op=op_id, path=path, state=render(state))

    def ack_present(self, op_id: str, path: str) -> None:
        """`path` was acknowledged present (listed by an fsync'd folder, or a folder above an fsync'd
        file): its content is not pinned, but it may no longer be absent."""
        with self._lock:
            present = {s for s in self.durable[path] if s != ABSENT}
            self.durable[path] = present or {self._present(path)}
        self.history.record("ack", op=op_id, path=path, state="present")

    # ---- faults -----------------------------------------------------------------------

    def forget_view(self, mount: int) -> None:
        """Mount `mount` lost its cache and journal: it shows what the network holds from now on."""
        with self._lock:
            for path, owner in self.owner.items():
                if owner == mount:
                    self.view[path] = set(self.durable[path])

    # ---- the final check --------------------------------------------------------------

    def expected(self, path: str) -> set[State]:
        """The states a fresh machine may find at `path`."""
        with self._lock:
            return set(self.durable[path])

    def paths(self) -> list[str]:
        """Every tracked path, parents before children."""
        with self._lock:
            return sorted(self.durable, key=lambda p: (p.count("/"), p))
