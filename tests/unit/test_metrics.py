"""Per-backend series: in-flight and errors, refreshed from the pool when /metrics is scraped."""

from __future__ import annotations

import asyncio

from app.backend import Backend
from app.metrics import SYNC_SECS, Metrics


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


def _samples(metrics: Metrics, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name.startswith(prefix) and not sample.name.endswith("_created")
    }


def test_batched_request_counts_export_exactly_what_observe_would() -> None:
    durations = [0.0001, 0.0005, 0.0007, 0.003, 0.02, 0.02, 1.7, 45.0, 120.0]
    batched, direct = Metrics(), Metrics()
    for i, seconds in enumerate(durations):
        outcome = "ok" if i % 3 else "exhausted"
        batched.stats.outcomes[outcome] += 1
        batched.stats.request_duration.observe(seconds)
        batched.stats.upstream_duration.observe(seconds / 2)
        direct.outcome[outcome].inc()
        direct.request_duration.observe(seconds)
        direct.upstream_duration.observe(seconds / 2)
        if i == 4:
            batched.sync()  # a sync in the middle adds only what came since
    batched.stats.inflight = 3
    batched.sync()
    batched.sync()  # nothing new: nothing added twice
    direct.inflight.set(3)
    for prefix in (
        "hyperbytedb_proxy_requests",
        "hyperbytedb_proxy_request_duration",
        "hyperbytedb_proxy_upstream_duration",
        "hyperbytedb_proxy_inflight",
    ):
        assert _samples(batched, prefix) == _samples(direct, prefix), prefix
    assert _samples(batched, "hyperbytedb_proxy_request_duration_seconds_count")
    assert b'hyperbytedb_proxy_requests_total{outcome="ok"} 6.0' in batched.expose().body


def test_a_scrape_includes_requests_counted_since_the_last_sync() -> None:
    metrics = Metrics()
    metrics.stats.outcomes["ok"] += 2
    metrics.stats.buffered_bytes = 4096
    body = metrics.expose().body
    assert b'hyperbytedb_proxy_requests_total{outcome="ok"} 2.0' in body
    assert b"hyperbytedb_proxy_buffered_request_bytes 4096.0" in body


def test_counted_requests_reach_the_metrics_within_the_sync_interval() -> None:
    async def scenario() -> float | None:
        metrics = Metrics()
        metrics.request_finished("ok", 0.004)
        metrics.request_finished("ok", 0.002)
        assert metrics.registry.get_sample_value("hyperbytedb_proxy_requests_total", {"outcome": "ok"}) == 0
        await asyncio.sleep(SYNC_SECS * 3)
        return metrics.registry.get_sample_value("hyperbytedb_proxy_requests_total", {"outcome": "ok"})

    assert asyncio.run(scenario()) == 2


def test_a_long_request_shows_in_flight_without_a_scrape_or_another_request() -> None:
    async def scenario() -> tuple[float | None, float | None]:
        metrics = Metrics()
        metrics.request_started()  # and nothing finishes: a request held for a backend
        await asyncio.sleep(SYNC_SECS * 3)
        during = metrics.registry.get_sample_value("hyperbytedb_proxy_inflight_requests")
        metrics.request_finished("no_backend", 5.0)
        await asyncio.sleep(SYNC_SECS * 3)
        return during, metrics.registry.get_sample_value("hyperbytedb_proxy_inflight_requests")

    assert asyncio.run(scenario()) == (1, 0)
