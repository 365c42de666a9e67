"""Per-backend series: in-flight and errors, refreshed from the pool when /metrics is scraped."""

from __future__ import annotations

from app.backend import Backend
from app.metrics import Metrics


def sample(metrics: Metrics, name: str, backend: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"backend": backend})


def test_backend_series_follow_the_pool_and_count_errors_once() -> None:
    metrics = Metrics()
    a, b = Backend("10.0.0.2", 8086), Backend("10.0.0.3", 8086)
    a.inflight, a.errors = 3, 2
    metrics.set_backend_load([a, b])
    assert sample(metrics, "hyperbytedb_proxy_backend_inflight_requests", "10.0.0.2:8086") == 3
    assert sample(metrics, "hyperbytedb_proxy_backend_errors_total", "10.0.0.2:8086") == 2
    assert sample(metrics, "hyperbytedb_proxy_backend_errors_total", "10.0.0.3:8086") == 0

    a.inflight, a.errors = 0, 5
    metrics.set_backend_load([a, b])
    metrics.set_backend_load([a, b])  # a second scrape adds nothing
    assert sample(metrics, "hyperbytedb_proxy_backend_inflight_requests", "10.0.0.2:8086") == 0
    assert sample(metrics, "hyperbytedb_proxy_backend_errors_total", "10.0.0.2:8086") == 5

    # b leaves DNS: its series go.  a's address comes back as a new backend: its counter keeps rising.
    again = Backend("10.0.0.2", 8086)
    again.errors = 1
    metrics.set_backend_load([again])
    assert sample(metrics, "hyperbytedb_proxy_backend_inflight_requests", "10.0.0.3:8086") is None
    assert sample(metrics, "hyperbytedb_proxy_backend_errors_total", "10.0.0.3:8086") is None
    assert sample(metrics, "hyperbytedb_proxy_backend_errors_total", "10.0.0.2:8086") == 6
