"""Two gunicorn workers behind one listener: /metrics speaks for both."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from sim.processes import NodeProcess, ProxyProcess
from tests.integration.conftest import NODE_IPS, ProxyFactory

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_two_workers_aggregate_metrics(
    tmp_path: Path, nodes: dict[str, NodeProcess], start_proxy: ProxyFactory, node_port: int
) -> None:
    multiproc = tmp_path / "prometheus"
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(REPO / "gunicorn.conf.py"),
        "app.main:create_app_from_env()",
    ]
    proxy = ProxyProcess(
        {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": ",".join(NODE_IPS),
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(node_port),
            "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.5",
            "HYPERBYTEDB_PROXY_WORKERS": "2",
            "HYPERBYTEDB_PROXY_ADMIN_TOKEN": "t0ken",
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
            "LOG_LEVEL": "warning",
        },
        argv=gunicorn,
        log_dir=tmp_path,
    )
    try:
        proxy.start()
        proxy.wait_ready(timeout=20)
        pids: set[str] = set()
        for i in range(60):
            # A new connection each time, so the kernel spreads them over both workers.
            with httpx.Client(base_url=proxy.url, timeout=5) as client:
                r = client.post("/write?db=w", content=f"m v={i} {1_700_000_000_000_000_000 + i}")
                assert r.status_code == 204
        pids = {p.name.split("_")[-1].removesuffix(".db") for p in multiproc.glob("counter_*.db")}
        assert len(pids) == 2, f"expected both workers to count requests, saw files for {pids}"
        # Each worker adds its requests to its metric file within a tenth of a second.
        for _ in range(20):
            text = httpx.get(f"{proxy.url}/metrics", timeout=5).text
            if _sample(text, 'hyperbytedb_proxy_requests_total{outcome="ok"}') == 60:
                break
            time.sleep(0.05)
        assert _sample(text, 'hyperbytedb_proxy_requests_total{outcome="ok"}') == 60  # summed over workers
        assert _sample(text, "hyperbytedb_proxy_request_duration_seconds_count") == 60
        active = _sample(text, 'hyperbytedb_proxy_backends{health="active"}')
        assert active == 3  # a gauge reported once, not once per worker

        # An exclusion made through one worker is honoured by both within a health interval.
        excluded = NODE_IPS[0]
        r = httpx.post(
            f"{proxy.url}/admin/backends/{excluded}/exclude", headers={"Authorization": "Bearer t0ken"}
        )
        assert r.status_code == 200
        time.sleep(1.0)  # two health intervals
        before = nodes[excluded].requests()["paths"].get("/ping", 0)
        for _ in range(40):
            with httpx.Client(base_url=proxy.url, timeout=5) as client:
                assert client.get("/ping").status_code == 204
        assert nodes[excluded].requests()["paths"].get("/ping", 0) == before
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait_exit(timeout=20) == 0
    finally:
        proxy.stop()


def test_gunicorn_configuration_error_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    import subprocess

    from sim.processes import minimal_env

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(REPO / "gunicorn.conf.py"),
            "app.main:create_app_from_env()",
        ],
        env=minimal_env({"HYPERBYTEDB_PROXY_MAX_RETRIES": "lots"}),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 2 and "Traceback" not in result.stderr
