"""A reduced ``make chaos`` in every test run: one kill per step × victim, two volumes
(CSI) or two claims with their pods (control plane) at a time."""

from __future__ import annotations

import pytest

from tests.chaos.runner import main
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.timeout(1800)]


@pytest.mark.parametrize("suite", ["csi", "cp"])
def test_every_step_converges_after_its_processes_are_killed(suite: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--suite", suite, "--trials", "1", "--inflight", "2", "--claims", "2"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
