"""``python -m bench --quick`` runs end to end: every target starts, is driven and is reported.

No timing is asserted (benchmarks are commands, not tests); this only keeps
the harness working.  wrk, nginx and curl come from the bench itself (it runs
apt-get as root when they are missing) or from CI's setup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report, tls

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECS = 150  # the quick run takes ~35 s on two cores

pytestmark = pytest.mark.integration


def test_quick_bench_reports_every_target(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("HYPERBYTEDB_PROXY_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(results)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECS,
        check=False,
    )
    output = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-4000:]}"
    assert completed.returncode == 0, output

    table = completed.stdout
    for target in (*report.TARGETS, *report.STREAM_TARGETS):
        assert target in table, f"{target!r} missing from the table\n{output}"
    for check in ("T1", "T2", "T3", "T4", "T5a", "T5b", "T6"):
        assert f"] {check} " in table, f"target {check} missing\n{output}"
    for check in ("T7", "T8"):
        assert f"] {check} " in table and "medians" in table, f"target {check} missing\n{output}"
    assert "Side by side: small query x32, 1 interleaved rounds" in table, output
    assert "Transport comparison" in table, output
    assert "TLS to the backend" in table, output

    data = json.loads(results.read_text())
    measured = {row["target"] for row in data["rows"] if row["status"] == "ok"}
    # Everything but gunicorn (skipped by --quick) was driven and answered.
    assert set(report.TARGETS) - {report.OURS_GUNICORN} <= measured, output
    assert {tls.NGINX_TLS, tls.OURS_TLS} <= measured, output
    assert all(row["wrk"]["requests"] > 0 for row in data["rows"] if row["status"] == "ok"), output
    side = data["side_by_side"]
    assert side["conns"] == 32 and set(side["rps"]) == set(report.PAIRED_TARGETS), output
    assert all(len(rounds) == 1 and rounds[0] > 0 for rounds in side["rps"].values()), output
    assert {row["target"] for row in data["stream"] if row["status"] == "ok"} == set(report.STREAM_TARGETS), (
        output
    )
