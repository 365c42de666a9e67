"""The fault suite in its short form: one test per scenario, so a failure names its fault.

Each test runs what ``python -m chaos --short --scenario NAME`` runs (a fresh
cluster of real processes on loopback, ~6 s of load, the fault) and asserts
every check of the scenario; the failure message lists the checks, notes and
the directory holding every process log.  All together they take 2-3 minutes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chaos.__main__ import ALL, SHORT_DURATION, run_scenario
from chaos.scenarios import Options

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", list(ALL))
def test_scenario_short(name: str, tmp_path: Path) -> None:
    opts = Options(short=True, duration=SHORT_DURATION, workdir=tmp_path)
    result = asyncio.run(run_scenario(name, opts))
    print(result.summary())
    if result.skipped is not None:
        pytest.skip(result.skipped)
    assert result.ok, result.summary()
