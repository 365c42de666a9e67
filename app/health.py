"""Active health checks: probe every backend on a fixed cadence.

Probes use their own httpx client so a burst of user traffic can never delay
them, and vice versa.  A probe's answer maps to a health:

* 2xx: Active (after ``HEALTH_RISE`` successes in a row when recovering);
* 503: Draining at once -- the node says it is syncing, draining or failing;
* anything else, a timeout or a connection error: Down (after
  ``HEALTH_FALL`` failures in a row when the backend was Active).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import httpx

from app.backend import Backend, Health, Transition
from app.metrics import Metrics
from app.pool import BackendPool, TransitionListener
from app.settings import Settings

log = logging.getLogger("hyperbytedb_proxy.health")

ERROR_SNIPPET = 200


def transition_logger(metrics: Metrics) -> TransitionListener:
    """Count every health change and log it in one line (a warning when a backend goes Down)."""

    def on_transition(backend: Backend, transition: Transition) -> None:
        metrics.transitions.labels(transition.old.value, transition.new.value).inc()
        log.log(
            logging.WARNING if transition.new is Health.DOWN else logging.INFO,
            "backend health changed",
            extra={
                "fields": {
                    "backend": backend.host_header,
                    "from": transition.old.value,
                    "to": transition.new.value,
                    "reason": transition.reason,
                }
            },
        )

    return on_transition


class HealthChecker:
    def __init__(
        self,
        settings: Settings,
        pool: BackendPool,
        client: httpx.AsyncClient,
        metrics: Metrics,
        *,
        tls_name: str | None = None,
    ) -> None:
        self._settings = settings
        # Probes dial the pod IP but check (and send as SNI) the name its certificate carries.
        self._extensions = {"sni_hostname": tls_name} if tls_name else None
        self._pool = pool
        self._client = client
        self._metrics = metrics
        self._timeout = settings.health_timeout_ms / 1000
        self._rise = settings.health_rise
        self._fall = settings.health_fall
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Probe all backends every interval, at a fixed rate that slow probes cannot stretch.

        The first round waits one interval: discovery probes newcomers itself.
        """
        loop = asyncio.get_running_loop()
        interval = self._settings.health_interval_secs
        next_round = loop.time()
        while True:
            next_round += interval
            delay = next_round - loop.time()
            if delay < 0:  # a round overran: start the next one now, not a burst of catch-ups
                next_round = loop.time()
                delay = 0
            await asyncio.sleep(delay)
            await self.probe_all()

    async def probe_all(self) -> None:
        backends = self._pool.backends()
        if backends:
            await asyncio.gather(*(self.probe(b) for b in backends))

    def probe_soon(self, backends: Iterable[Backend]) -> None:
        """Probe newcomers now rather than at the next round, so they serve sooner."""
        for backend in backends:
            task = asyncio.ensure_future(self.probe(backend))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def probe(self, backend: Backend) -> None:
        url = backend.base_url + self._settings.health_path
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            response = await self._client.get(url, timeout=self._timeout, extensions=self._extensions)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}: {response.text[:ERROR_SNIPPET]}".rstrip(": ")
        except httpx.TimeoutException:
            error = f"probe timed out after {self._timeout:g}s"
        except httpx.HTTPError as exc:
            error = f"probe failed: {exc or type(exc).__name__}"
        latency = time.perf_counter() - started
        self._metrics.probe_duration.observe(latency)
        backend.last_probe_at = time.time()
        backend.last_probe_latency = latency
        backend.last_error = error
        self._apply(backend, status, error)

    def _apply(self, backend: Backend, status: int | None, error: str | None) -> None:
        if status is not None and 200 <= status < 300:
            backend.consecutive_failures = 0
            backend.consecutive_successes += 1
            first_answer = backend.health is Health.UNKNOWN
            if first_answer or backend.consecutive_successes >= self._rise:
                self._pool.set_health(backend, Health.ACTIVE, f"probe answered {status}")
            return
        backend.consecutive_successes = 0
        backend.consecutive_failures += 1
        if status == 503:
            self._pool.set_health(backend, Health.DRAINING, error or "probe answered 503")
        elif backend.health is not Health.ACTIVE or backend.consecutive_failures >= self._fall:
            self._pool.set_health(backend, Health.DOWN, error or f"probe answered {status}")
