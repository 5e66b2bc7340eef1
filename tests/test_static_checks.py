"""Static checks as part of the test command: strict types for the two lower layers, lint everywhere.

`mypy --strict` covers cryptree/ (pure formats and crypto) and transport/
(everything a stranger's bytes reach first); `ruff` covers the whole tree
with the rules in pyproject.toml. Both come with the test extras.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cryptree_and_transport_type_check_strictly() -> None:
    res = _run("mypy", "--strict", "--no-error-summary", "cryptree", "transport")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]


def test_ruff_finds_nothing() -> None:
    res = _run("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
