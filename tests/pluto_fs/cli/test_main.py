"""How `pluto` reports failures (pluto_fs/cli/main.py): one line each, no traceback."""

from __future__ import annotations

import pytest

from pluto_fs.cli.main import EXIT_FAILED, EXIT_USAGE, UsageError, _report_group
from pluto_fs.errors import HomeError, NotEnoughPeers
from transport.errors import ConnectionClosed


def test_each_distinct_error_of_a_task_group_gets_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    group = ExceptionGroup("nursery", [
        NotEnoughPeers("only 2 of 5 peers answered"),
        ExceptionGroup("inner", [ConnectionClosed("peer went away"), NotEnoughPeers("only 2 of 5 peers answered")]),
        KeyError("oops"),
    ])
    assert _report_group(group) == EXIT_FAILED
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "pluto: only 2 of 5 peers answered",
        "pluto: network error: peer went away; check that the coordinator and peers are running",
        "pluto: unexpected error (a bug, please report it): KeyError: 'oops'; run with --log-level debug for details",
    ]


def test_the_exit_code_is_the_first_errors_and_ctrl_c_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert _report_group(ExceptionGroup("g", [UsageError("--owner: bad"), HomeError("no home")])) == EXIT_USAGE
    assert _report_group(BaseExceptionGroup("g", [KeyboardInterrupt()])) == 130
    assert capsys.readouterr().err.splitlines() == ["pluto: --owner: bad", "pluto: no home"]


def test_a_system_exit_inside_a_group_goes_on_as_it_is() -> None:
    with pytest.raises(SystemExit):
        _report_group(BaseExceptionGroup("g", [SystemExit(3), NotEnoughPeers("x")]))
