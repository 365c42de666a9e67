"""The admin routes: liveness, readiness, the backends view and the metrics exposition."""

from __future__ import annotations

import pytest

from app.backend import Health
from tests.unit.harness import Harness

pytestmark = pytest.mark.anyio


async def test_healthz_readyz_and_backends() -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.3"])
    async with h.running():
        assert (await h.client.get("/healthz")).status_code == 200
        ready = await h.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["routable_backends"] == 2
        view = (await h.client.get("/admin/backends")).json()
        first = view["backends"][0]
        assert {"address", "port", "health", "inflight", "consecutive_failures", "last_probe_at",
                "last_probe_latency_ms", "last_error"} <= set(first)  # fmt: skip
        assert first["health"] == "active" and first["port"] == 8086
        for backend in h.state.pool.backends():
            h.state.pool.set_health(backend, Health.DOWN, "test")
        assert (await h.client.get("/readyz")).status_code == 503
        h.set_health("127.0.0.2", Health.ACTIVE)
        h.state.begin_shutdown()
        assert (await h.client.get("/readyz")).status_code == 503
        assert (await h.client.get("/healthz")).status_code == 200
    assert not h.backends.calls  # admin routes never reach a backend


async def test_metrics_exposition() -> None:
    h = Harness(ips=["127.0.0.2"])
    async with h.running():
        text = (await h.client.get("/metrics")).text
    for name in (
        'hyperbytedb_proxy_requests_total{outcome="ok"}',
        'hyperbytedb_proxy_backends{health="active"} 1.0',
        "hyperbytedb_proxy_request_duration_seconds_bucket",
        "hyperbytedb_proxy_no_backend_total",
        "hyperbytedb_proxy_health_transitions_total",
        'hyperbytedb_proxy_retries_total{reason="drain_503"}',
        "hyperbytedb_proxy_probe_duration_seconds_bucket",
        "hyperbytedb_proxy_upstream_duration_seconds_bucket",
    ):
        assert name in text, name
