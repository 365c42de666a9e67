"""Everything one proxy instance owns, built together and started by the lifespan."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Awaitable

import httpx

from app.access_log import AccessLog
from app.backend import Backend, Health, Transition
from app.client import ForwardingClient
from app.discovery import Discovery, Resolver
from app.exclusions import ExclusionStore, shared_exclusions_path
from app.health import HealthChecker
from app.metrics import Metrics
from app.outlier import OutlierDetector
from app.peers import PeerFleet
from app.pool import BackendPool
from app.proxy import ProxyEndpoint
from app.retry_budget import RetryBudget
from app.settings import Settings
from app.tls import backend_context
from app.transport import UpstreamTransport

log = logging.getLogger("hyperbytedb_proxy")

USER_AGENT = "hyperbytedb-proxy-health/0.1"
STARTUP_DISCOVERY_TIMEOUT = 5.0


class ProxyState:
    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver,
        forward_transport: httpx.AsyncBaseTransport | None = None,
        probe_transport: httpx.AsyncBaseTransport | None = None,
        peer_transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(multiprocess_dir=settings.prometheus_multiproc_dir)
        self.access_log = access_log or AccessLog(
            settings.log_format, on_drop=self.metrics.access_log_dropped.inc
        )
        tls = backend_context(settings)
        self.pool = BackendPool(
            settings.backend_port, scheme="http" if tls is None else "https", lb_policy=settings.lb_policy
        )
        self.pool.add_listener(self._on_transition)
        tls_name = settings.backend_tls_name if tls is not None else None
        self.upstream = forward_transport or UpstreamTransport(
            ssl_context=tls,
            server_hostname=tls_name,
            max_header_bytes=settings.backend_max_header_bytes,
            max_headers=settings.backend_max_headers,
        )
        # Requests are built by the proxy itself; timeouts travel with each one.
        self.forward_client = ForwardingClient(self.upstream)
        self.probe_client = httpx.AsyncClient(
            transport=probe_transport,
            timeout=settings.health_timeout_ms / 1000,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            verify=tls if tls is not None else True,
            trust_env=False,
        )
        self.retry_budget = RetryBudget(
            percent=settings.retry_budget_percent,
            min_per_sec=settings.retry_budget_min_per_sec,
            window_secs=settings.retry_budget_window_secs,
        )
        self.outlier = OutlierDetector(
            self.pool,
            consecutive_failures=settings.outlier_consecutive_failures,
            ejection_secs=settings.outlier_ejection_secs,
            max_ejected_percent=settings.outlier_max_ejected_percent,
            on_eject=lambda backend, kind: self.metrics.outlier_ejections.labels(kind.value).inc(),
        )
        self.proxy = ProxyEndpoint(
            settings,
            self.pool,
            self.forward_client,
            self.metrics,
            self.retry_budget,
            outlier=self.outlier,
            access_log=self.access_log,
        )
        self.health = HealthChecker(settings, self.pool, self.probe_client, self.metrics, tls_name=tls_name)
        self.exclusions = ExclusionStore(
            shared_exclusions_path(settings.prometheus_multiproc_dir) if settings.workers > 1 else None
        )
        self.discovery = Discovery(
            settings,
            self.pool,
            resolver,
            self.metrics,
            on_added=self._on_added,
            on_removed=self._on_removed,
        )
        # Replicas that share exclusions (PEER_SERVICE); their calls get a client of their own.
        self.peer_client: httpx.AsyncClient | None = None
        self.peers: PeerFleet | None = None
        if settings.peer_service is not None:
            self.peer_client = httpx.AsyncClient(
                transport=peer_transport, trust_env=False, follow_redirects=False
            )
            self.peers = PeerFleet(settings, resolver, self.peer_client)
        self.shutting_down = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.access_log.start()
        self.exclusions.reload()  # a worker (re)started by gunicorn honours existing exclusions at once
        try:
            async with asyncio.timeout(STARTUP_DISCOVERY_TIMEOUT):
                await self.discovery.refresh()
        except TimeoutError:
            log.warning("initial DNS discovery timed out; serving and retrying in the background")
        self._tasks = [
            asyncio.create_task(self._supervise("discovery", self.discovery.run)),
            asyncio.create_task(self._supervise("health checks", self.health.run)),
        ]
        if self.peers is not None:  # ready only once a peer replica's exclusions are in
            await self.peers.learn_own_addresses()
            token = self.settings.admin_token
            sync = functools.partial(
                self.peers.sync_at_start, token.get_secret_value() if token else None, self.adopt_exclusions
            )
            self._tasks.append(asyncio.create_task(self._supervise("peer exclusion sync", sync)))
        if self.exclusions.shared:  # other workers may exclude backends: pick their changes up
            self._tasks.append(
                asyncio.create_task(self._supervise("exclusion sync", self._sync_exclusions_loop))
            )
        log.info(
            "proxy started",
            extra={
                "fields": {
                    "listen": str(self.settings.listen),
                    "admin_listen": str(self.settings.admin_listen or self.settings.listen),
                    "tls": self.settings.listener_tls,
                    "backend_tls": self.settings.backend_tls,
                    "service": self.settings.backend_service,
                    "backends": len(self.pool),
                }
            },
        )

    async def stop(self) -> None:
        self.begin_shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.outlier.close()
        await self.health.aclose()
        await self.forward_client.aclose()
        await self.probe_client.aclose()
        if self.peer_client is not None:
            await self.peer_client.aclose()
        self.access_log.close()  # every request has finished: write its lines before exiting

    def begin_shutdown(self) -> None:
        """Readiness fails from now on, so load balancers stop sending new traffic."""
        if not self.shutting_down:
            self.shutting_down = True
            log.info("shutdown started; draining in-flight requests")

    async def _supervise(self, name: str, loop_fn: collections.abc.Callable[[], Awaitable[None]]) -> None:
        """Keep a background loop alive: an unexpected error is logged and the loop restarted."""
        while True:
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background loop crashed; restarting in 1s", extra={"fields": {"loop": name}})
                await asyncio.sleep(1)

    def _on_transition(self, backend: Backend, transition: Transition) -> None:
        self.metrics.transitions.labels(transition.old.value, transition.new.value).inc()
        level = logging.WARNING if transition.new in (Health.DOWN,) else logging.INFO
        log.log(
            level,
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

    def _on_added(self, backends: collections.abc.Sequence[Backend]) -> None:
        for backend in backends:
            if backend.address in self.exclusions:
                self.pool.set_excluded(backend, True)
        self.health.probe_soon(backends)

    def _on_removed(self, backends: collections.abc.Sequence[Backend]) -> None:
        # An exclusion names a pod; once its IP leaves DNS it must not
        # silently apply to a future pod that reuses the address.
        self.exclusions.discard(b.address for b in backends)
        for backend in backends:
            self.outlier.forget(backend)
        if isinstance(self.upstream, UpstreamTransport):
            for backend in backends:
                self.upstream.forget(backend.address, backend.port)

    # -- operator exclusions ------------------------------------------------

    def set_excluded(self, backend: Backend, excluded: bool) -> None:
        if excluded:
            self.exclusions.add(backend.address)
        else:
            self.exclusions.discard([backend.address])
        self._apply_exclusion(backend, excluded)

    def adopt_exclusions(self, addresses: collections.abc.Iterable[str]) -> None:
        """Exclude what a peer replica excludes (a backend not discovered yet is excluded on arrival)."""
        for address in addresses:
            backend = self.pool.get(address)
            if backend is not None:
                self.set_excluded(backend, True)
            else:
                self.exclusions.add(address)

    def sync_exclusions(self) -> None:
        """Apply exclusions another worker made."""
        if self.exclusions.reload():
            for backend in self.pool.backends():
                self._apply_exclusion(backend, backend.address in self.exclusions)

    def _apply_exclusion(self, backend: Backend, excluded: bool) -> None:
        if backend.excluded != excluded:
            self.pool.set_excluded(backend, excluded)
            log.info(
                "backend excluded by operator" if excluded else "backend included by operator",
                extra={"fields": {"backend": backend.host_header}},
            )

    async def _sync_exclusions_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_secs)
            self.sync_exclusions()

    def refresh_gauges(self) -> None:
        members = self.pool.backends()
        counts = collections.Counter(b.health for b in members if b.ejection is None)
        ejected = sum(1 for b in members if b.ejection is not None)
        self.metrics.set_backend_counts(dict(counts), ejected=ejected)
        self.metrics.set_backend_load(members)
        self.metrics.routable.set(self.pool.routable_count)

    @contextlib.asynccontextmanager
    async def running(self) -> collections.abc.AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()
