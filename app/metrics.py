"""Prometheus metrics, one registry per app.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (several gunicorn workers),
prometheus-client backs every value with a file in that directory and
``/metrics`` aggregates all workers' files instead of this process's registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from app.backend import Health

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip

OUTCOMES = ("ok", "fatal", "exhausted", "no_backend", "timeout", "rejected", "overloaded", "client_closed")
RETRY_REASONS = ("connect", "transport", "status_502", "status_504", "drain_503", "timeout")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(frozen=True, slots=True)
class Exposition:
    body: bytes
    content_type: str = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric the proxy exports, created on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hyperbytedb_proxy_requests_total",
            "Proxied requests by how they ended.",
            ["outcome"],
            registry=r,
        )
        self.outcome = {name: self.requests.labels(name) for name in OUTCOMES}
        self.request_duration = Histogram(
            "hyperbytedb_proxy_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "hyperbytedb_proxy_upstream_duration_seconds",
            "Time from forwarding to a backend until its response headers arrive, per attempt.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.no_backend = Counter(
            "hyperbytedb_proxy_no_backend_total",
            "Requests answered 503 because no backend became Active within the hold timeout.",
            registry=r,
        )
        self.retries = Counter(
            "hyperbytedb_proxy_retries_total",
            "Forwards repeated on another backend, by the failure that caused them.",
            ["reason"],
            registry=r,
        )
        self.retry_reason = {name: self.retries.labels(name) for name in RETRY_REASONS}
        self.retries_denied = Counter(
            "hyperbytedb_proxy_retries_denied_total",
            "Retries refused because the retry budget was spent.",
            registry=r,
        )
        self.backends = Gauge(
            "hyperbytedb_proxy_backends",
            "Known backends by health.",
            ["health"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.routable = Gauge(
            "hyperbytedb_proxy_routable_backends",
            "Backends requests can be sent to: Active and not excluded by an operator.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.transitions = Counter(
            "hyperbytedb_proxy_health_transitions_total",
            "Backend health changes.",
            ["from", "to"],
            registry=r,
        )
        self.probe_duration = Histogram(
            "hyperbytedb_proxy_probe_duration_seconds",
            "Health probe latency.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "hyperbytedb_proxy_inflight_requests",
            "Requests being forwarded or relayed right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.held = Gauge(
            "hyperbytedb_proxy_held_requests",
            "Requests waiting for an Active backend right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.buffered_bytes = Gauge(
            "hyperbytedb_proxy_buffered_request_bytes",
            "Request-body bytes buffered right now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.discovery_errors = Counter(
            "hyperbytedb_proxy_discovery_errors_total",
            "DNS resolutions of the backend service that failed (the pool was kept).",
            registry=r,
        )
        self.access_log_dropped = Counter(
            "hyperbytedb_proxy_access_log_dropped_total",
            "Access log lines dropped because the log output could not keep up.",
            registry=r,
        )
        for health in Health:
            self.backends.labels(health.value).set(0)

    def set_backend_counts(self, counts: dict[Health, int]) -> None:
        for health in Health:
            self.backends.labels(health.value).set(counts.get(health, 0))

    def expose(self) -> Exposition:
        directory = multiprocess_dir()
        if directory is None:
            return Exposition(generate_latest(self.registry))
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)
        return Exposition(generate_latest(merged))
