"""The fault-injection checker (tools/checker), one seeded run in the suite.

Two devices of one user write into the same folders while peers are
killed, frozen and wiped and mounts are killed (some losing their cache
and journal); from a fresh home restored from the seed, nothing fsync
acknowledged may be lost or rolled back, no folder may flip between reads
and every folder must still take a new file. Longer runs and other seeds:
`python -m tools.checker --help`.
"""

from __future__ import annotations

from pathlib import Path

from tools.checker import Settings, run

SEED = 7  # its schedule holds every kind of fault in the first 45 s (tools/checker/nemesis.py plan)


def test_a_seeded_fault_run_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    result = run(Settings(seed=SEED, mounts=2, minutes=0.75, keep=tmp_path / "run"))
    s = result.summary
    assert not s["error"], result.text
    # A checker that checks nothing is a defect: the run must have done real work under real faults.
    assert s["acked_ops"] >= 100, result.text
    injected = {k for k in ("kill-peer", "freeze-peer", "wipe-peer", "kill-mount", "lose-mount") if s["faults"].get(k)}
    assert s["faults_injected"] >= 6 and len(injected) >= 4, result.text
    assert s.get("paths_checked", 0) >= 60 and s.get("folders", 0) >= 4, result.text
    assert s.get("folders_written", 0) >= 4, result.text
    violations = [f.headline() for f in result.findings if f.violation]
    assert violations == [], f"seed {SEED}: {len(violations)} violations; report in {result.directory}\n{result.text}"
