"""A reduced ``make chaos`` in every test run: one trial of two volumes per step × victim."""

from __future__ import annotations

import pytest

from tests.conftest import needs_root

from .runner import main

pytestmark = [needs_root, pytest.mark.timeout(1200)]


def test_every_step_converges_after_its_processes_are_killed(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--trials", "1", "--inflight", "2"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
