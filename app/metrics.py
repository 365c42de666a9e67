"""Prometheus metrics, one registry per app.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (several gunicorn workers),
prometheus-client backs every value with a file in that directory and
``/metrics`` aggregates all workers' files instead of this process's registry;
the directory comes from the settings, the one place that reads it.

What every proxied request updates -- requests by outcome, the two latency
histograms, in-flight requests, buffered bytes -- is counted in
:class:`RequestStats` as plain numbers and added to the exported metrics in
batches (:meth:`Metrics.sync`): before every scrape, and at most
``SYNC_SECS`` after a request, so other workers' files are current too.  A
prometheus-client update takes a lock (seven of them per request, about
3 µs); a batch costs the same once per tenth of a second.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from app.backend import Backend, Health

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)  # fmt: skip

OUTCOMES = (
    "ok", "fatal", "exhausted", "no_backend", "timeout", "rejected", "overloaded", "client_closed",
    "not_public",  # a path outside PUBLIC_PATHS: answered 404 by the proxy itself
)  # fmt: skip
EJECTED = "ejected"  # the backends gauge's label for backends out by outlier detection
CLIENT_LIMITS = (
    "head_size", "header_count", "header_timeout", "body_timeout", "send_timeout", "upgrade_body",
    "incomplete_body",
)  # fmt: skip
RETRY_REASONS = ("connect", "transport", "status_502", "status_504", "drain_503", "timeout")
SYNC_SECS = 0.1  # the longest a request's counts wait before the exported metrics include them


class LatencyCounts:
    """A histogram as plain numbers: a count per bucket of LATENCY_BUCKETS (+Inf last) and a sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, as prometheus' "le" buckets count.
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


class RequestStats:
    """The per-request counters, cumulative, updated on the event loop only (no locks)."""

    __slots__ = ("buffered_bytes", "inflight", "outcomes", "request_duration", "upstream_duration")

    def __init__(self) -> None:
        self.inflight = 0
        self.buffered_bytes = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.request_duration = LatencyCounts()
        self.upstream_duration = LatencyCounts()


@dataclass(frozen=True, slots=True)
class Exposition:
    body: bytes
    content_type: str = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric the proxy exports, created on one registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess_dir: Path | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._multiprocess_dir = multiprocess_dir
        self.stats = RequestStats()
        self._synced = RequestStats()  # what the exported metrics already include
        self._sync_timer: asyncio.TimerHandle | None = None
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
        self.outlier_ejections = Counter(
            "hyperbytedb_proxy_outlier_ejections_total",
            "Backends taken out of routing by outlier detection, by the failure that ended the streak.",
            ["reason"],
            registry=r,
        )
        self.backends = Gauge(
            "hyperbytedb_proxy_backends",
            "Known backends by health; an ejected backend counts as ejected, whatever its probe says.",
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
        self.client_limit_violations = Counter(
            "hyperbytedb_proxy_client_limit_violations_total",
            "Client connections answered 4xx or closed for breaking a client-side limit, by limit.",
            ["limit"],
            registry=r,
        )
        self.client_limit = {name: self.client_limit_violations.labels(name) for name in CLIENT_LIMITS}
        self.discovery_errors = Counter(
            "hyperbytedb_proxy_discovery_errors_total",
            "DNS resolutions of the backend service that failed (the pool was kept).",
            registry=r,
        )
        # Per-backend series, refreshed from the pool at scrape time: the hot path only
        # bumps the Backend's own counters.
        self.backend_inflight = Gauge(
            "hyperbytedb_proxy_backend_inflight_requests",
            "Requests being forwarded to or relayed from this backend right now.",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.backend_errors = Counter(
            "hyperbytedb_proxy_backend_errors_total",
            "Forwards to this backend that failed: no connection, a transport error, or a retryable answer.",
            ["backend"],
            registry=r,
        )
        self._errors_seen: dict[str, tuple[Backend, int]] = {}
        self.access_log_dropped = Counter(
            "hyperbytedb_proxy_access_log_dropped_total",
            "Access log lines dropped because the log output could not keep up.",
            registry=r,
        )
        for health in Health:
            self.backends.labels(health.value).set(0)
        self.backends.labels(EJECTED).set(0)

    def request_started(self) -> None:
        self.stats.inflight += 1
        if self._sync_timer is None:  # a long request shows in the in-flight gauge within SYNC_SECS
            self._sync_timer = asyncio.get_running_loop().call_later(SYNC_SECS, self.sync)

    def request_finished(self, outcome: str, seconds: float) -> None:
        """Count one request (the hot path): plain increments, the export follows within SYNC_SECS."""
        stats = self.stats
        stats.inflight -= 1
        stats.outcomes[outcome] += 1
        stats.request_duration.observe(seconds)
        if self._sync_timer is None:
            self._sync_timer = asyncio.get_running_loop().call_later(SYNC_SECS, self.sync)

    def sync(self) -> None:
        """Add what the requests counted since the last sync to the exported metrics."""
        if self._sync_timer is not None:
            self._sync_timer.cancel()
            self._sync_timer = None
        stats, synced = self.stats, self._synced
        for outcome, count in stats.outcomes.items():
            if count != synced.outcomes[outcome]:
                self.outcome[outcome].inc(count - synced.outcomes[outcome])
                synced.outcomes[outcome] = count
        _add_counts(self.request_duration, stats.request_duration, synced.request_duration)
        _add_counts(self.upstream_duration, stats.upstream_duration, synced.upstream_duration)
        self.inflight.set(stats.inflight)
        self.buffered_bytes.set(stats.buffered_bytes)

    def close(self) -> None:
        """Export the last counts (at shutdown: other workers' scrapes read this one's file)."""
        self.sync()

    def count_client_violation(self, limit: str) -> None:
        self.client_limit[limit].inc()

    def set_backend_load(self, backends: Sequence[Backend]) -> None:
        """Per-backend in-flight and errors; series of backends that left the pool are dropped."""
        current = {backend.host_header: backend for backend in backends}
        for gone in self._errors_seen.keys() - current.keys():
            del self._errors_seen[gone]
            self.backend_inflight.remove(gone)
            self.backend_errors.remove(gone)
        for label, backend in current.items():
            self.backend_inflight.labels(label).set(backend.inflight)
            seen, before = self._errors_seen.get(label, (backend, 0))
            if seen is not backend:
                before = 0  # the same address re-added: a new backend with fresh counters
            self.backend_errors.labels(label).inc(max(0, backend.errors - before))
            self._errors_seen[label] = (backend, backend.errors)

    def set_backend_counts(self, counts: dict[Health, int], *, ejected: int = 0) -> None:
        for health in Health:
            self.backends.labels(health.value).set(counts.get(health, 0))
        self.backends.labels(EJECTED).set(ejected)

    def expose(self) -> Exposition:
        self.sync()
        if self._multiprocess_dir is None:
            return Exposition(generate_latest(self.registry))
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self._multiprocess_dir))
        return Exposition(generate_latest(merged))


def _add_counts(histogram: Histogram, counts: LatencyCounts, synced: LatencyCounts) -> None:
    """Add a batch of observations to a prometheus-client histogram, bucket by bucket.

    prometheus-client offers only ``observe`` (one value, one lock per
    bucket and sum); its per-bucket values and sum (``_buckets``, ``_sum``)
    are what ``observe`` itself updates, so a batch goes straight to them.
    ``tests/unit/test_metrics.py`` checks the result matches ``observe``'s.
    """
    buckets = histogram._buckets
    for index, count in enumerate(counts.buckets):
        delta = count - synced.buckets[index]
        if delta:
            buckets[index].inc(delta)
            synced.buckets[index] = count
    if counts.total != synced.total:
        histogram._sum.inc(counts.total - synced.total)
        synced.total = counts.total
