"""The fault checker's own bookkeeping (tools/checker), without processes: contents, plans, oracle rules.

A checker that miscounts is worse than none: these pin down that an
acknowledgement is exactly what fsync covered, that older states are refused
and later ones allowed, and that the seed alone fixes the schedule.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tools.checker.history import History
from tools.checker.nemesis import MOUNT_FAULTS
from tools.checker.nemesis import plan as plan_faults
from tools.checker.oracle import ABSENT, DIR, Oracle, matches
from tools.checker.workload import Namespace, decode, segment
from tools.checker.workload import plan as plan_ops


def test_contents_name_their_writers_and_corruption_is_seen() -> None:
    data = segment("m0.3", 70_000) + segment("m0.9", 5)
    assert decode(data) == ("m0.3", "m0.9")
    assert decode(b"") == ()
    flipped = bytearray(data)
    flipped[40_000] ^= 1
    assert decode(bytes(flipped)) is None
    assert decode(data[:-1]) is None
    assert decode(b"hello") is None


def test_the_seed_alone_fixes_the_operations_and_the_faults() -> None:
    assert list(plan_ops(5, 1, 300)) == list(plan_ops(5, 1, 300))
    assert list(plan_ops(5, 1, 300)) != list(plan_ops(6, 1, 300))
    assert plan_faults(5, 5, 2, 120, 2, False) == plan_faults(5, 5, 2, 120, 2, False)
    kinds = Counter(op.kind for op in plan_ops(5, 0, 2000))
    assert set(kinds) == {"write", "append", "rename", "unlink", "mkdir", "rmdir", "fsync_file", "fsync_dir",
                          "read", "list"}
    ns = Namespace(1)  # a mount changes only its own names (it lists and fsyncs shared folders too)
    changes = [op for op in plan_ops(5, 1, 2000) if op.kind not in ("list", "fsync_dir")]
    assert all(ns.owns(op.path) and (not op.dest or ns.owns(op.dest)) for op in changes)


def test_the_fault_plan_keeps_to_the_budget() -> None:
    for seed in range(30):
        faults = plan_faults(seed, 5, 2, 300, 2, aggressive=False)
        assert len({f.kind for f in faults}) == 5, seed
        for f in faults:
            if f.kind in MOUNT_FAULTS:
                continue
            down = {g.target for g in faults
                    if g.kind in ("kill-peer", "freeze-peer") and g.at <= f.at < g.at + g.duration}
            # a wipe counts as lost until the next mount fault (when the repair runs) after it
            lost = {g.target for g in faults if g.kind == "wipe-peer" and g.at <= f.at
                    and not any(m.kind in MOUNT_FAULTS and g.at < m.at < f.at for m in faults)}
            assert len(down | lost) <= 2, (seed, f)


def _oracle(tmp_path: Path) -> Oracle:
    oracle = Oracle(History(tmp_path / "history.jsonl"))
    oracle.track(["d", "d/f", "d/g"], owner=0)
    return oracle


def test_an_fsync_pins_the_state_and_only_later_writes_may_replace_it(tmp_path: Path) -> None:
    o = _oracle(tmp_path)
    o.begin("d/f", {(), ("w1",)})
    o.end("d/f", {("w1",)}, ok=True)
    o.ack("w1", "d/f", ("w1",))
    assert o.expected("d/f") == {("w1",)}  # neither absent nor empty any more
    o.begin("d/f", {("w1", "a2")})  # an append that failed: uncertain, never acknowledged
    o.end("d/f", {("w1", "a2")}, ok=False)
    assert o.expected("d/f") == {("w1",), ("w1", "a2")}
    assert o.view_of("d/f") == {("w1",), ("w1", "a2")}
    o.ack("f3", "d/f", ("w1", "a2"))
    assert not matches(("w1",), o.expected("d/f"))  # a rollback to the older acknowledged content
    assert not matches(ABSENT, o.expected("d/f"))


def test_a_folder_fsync_pins_names_not_contents(tmp_path: Path) -> None:
    o = _oracle(tmp_path)
    o.begin("d", {DIR})
    o.begin("d/f", {(), ("w1",)})
    o.begin("d/g", {("w2",)})
    o.begin("d/g", {ABSENT})  # unlinked again
    o.ack_present("s1", "d/f")
    o.ack("s1", "d/g", ABSENT)
    assert o.expected("d/f") == {(), ("w1",)}
    assert o.expected("d/g") == {ABSENT}


def test_a_rename_carries_what_the_network_may_hold_of_the_source(tmp_path: Path) -> None:
    o = _oracle(tmp_path)
    o.begin("d/f", {("w1",)})
    o.ack("w1", "d/f", ("w1",))
    o.begin("d/f", {("w2",)})  # rewritten, not fsync'd: the network may still hold w1 under this name
    o.end("d/f", {("w2",)}, ok=True)
    carried = o.moved("d/f")
    assert carried == {("w1",), ("w2",)}
    o.begin("d/g", carried)
    o.begin("d/f", {ABSENT})
    assert {("w1",), ("w2",)} <= o.expected("d/g")
    assert o.expected("d/f") == {("w1",), ("w2",), ABSENT}


def test_an_observation_outside_the_view_is_a_finding_and_then_the_view_follows_it(tmp_path: Path) -> None:
    o = _oracle(tmp_path)
    o.begin("d/f", {("w1",)})
    o.end("d/f", {("w1",)}, ok=True)
    o.observe("r1", "d/f", ("w1",))
    assert o.history.findings == []
    o.observe("r2", "d/f", ABSENT)  # the mount forgot a write it had accepted
    assert [f.kind for f in o.history.findings] == ["view"]
    assert o.view_of("d/f") == {ABSENT}
    o.forget_view(0)  # the machine is gone: the mount now shows what the network may hold
    assert o.view_of("d/f") == o.expected("d/f")


def test_a_state_older_than_an_acknowledgement_seen_during_the_run_is_a_rollback_not_a_view_slip(
    tmp_path: Path,
) -> None:
    o = _oracle(tmp_path)
    o.begin("d/f", {("w1",)})
    o.ack("w1", "d/f", ("w1",))
    o.begin("d/f", {("w2",)})
    o.ack("w2", "d/f", ("w2",))
    o.forget_view(0)
    o.observe("r1", "d/f", ("w1",))  # the network gave back the older acknowledged content
    assert [f.kind for f in o.history.findings] == ["rollback"]
    o.ack("u1", "d/g", ABSENT)
    o.observe_listed("l1", "d/g", listed=True)
    assert [f.kind for f in o.history.findings] == ["rollback", "resurrected"]


def test_a_folder_that_reappears_is_expected_back_as_a_folder_not_as_a_file(tmp_path: Path) -> None:
    o = Oracle(History(tmp_path / "history.jsonl"))
    o.track(["a"], owner=None, initial=DIR)
    o.track(["a/m0-s0"], owner=0)
    o.folders.add("a/m0-s0")
    o.observe_listed("l1", "a/m0-s0", listed=True)  # nothing ever made it: resurrected...
    assert [f.kind for f in o.history.findings] == ["resurrected"]
    o.ack_present("s1", "a/m0-s0")  # ...and from now on it is a folder that must stay
    assert o.expected("a/m0-s0") == {DIR}
    assert not matches(ABSENT, o.expected("a/m0-s0"))


def test_a_finding_quotes_the_history_up_to_the_moment_it_was_found(tmp_path: Path) -> None:
    from tools.checker.report import history_slice

    o = _oracle(tmp_path)
    o.ack("w1", "d/f", ("w1",))
    o.forget_view(0)
    o.observe("r1", "d/f", ABSENT)  # found by r1, which acknowledges the absence right after
    o.ack("r1", "d/f", ABSENT)
    text = "\n".join(history_slice(o.history.snapshot(), o.history.findings[0]))
    assert "last acknowledged at" in text and "by w1 as file[w1]" in text and "r1" not in text
