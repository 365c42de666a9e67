"""The running proxy: what one instance owns, started by the lifespan and stopped on shutdown.

Everything here is built and wired by ``create_app``; this object only runs
it -- background loops under supervision, readiness during a drain, the
orderly close of clients and writers -- and is what the admin routes read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from app.access_log import AccessLog
from app.discovery import Discovery
from app.exclusions import OperatorExclusions
from app.health import HealthChecker
from app.metrics import Metrics
from app.outlier import OutlierDetector
from app.peers import PeerFleet
from app.pool import BackendPool
from app.proxy import ProxyEndpoint
from app.settings import Settings

log = logging.getLogger("hyperbytedb_proxy")

STARTUP_DISCOVERY_TIMEOUT = 5.0


class Closeable(Protocol):
    """An HTTP client or forwarder, closed once the last request is done."""

    async def aclose(self) -> None: ...


class ProxyState:
    """Lifecycle of the wired components; the attributes are what the admin routes and tests read."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics,
        access_log: AccessLog,
        pool: BackendPool,
        proxy: ProxyEndpoint,
        outlier: OutlierDetector,
        health: HealthChecker,
        discovery: Discovery,
        exclusions: OperatorExclusions,
        peers: PeerFleet | None,
        clients: tuple[Closeable, ...],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.access_log = access_log
        self.pool = pool
        self.proxy = proxy
        self.outlier = outlier
        self.health = health
        self.discovery = discovery
        self.exclusions = exclusions
        self.peers = peers
        self._clients = clients
        self.shutting_down = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.access_log.start()
        self.exclusions.reload()
        try:
            async with asyncio.timeout(STARTUP_DISCOVERY_TIMEOUT):
                await self.discovery.refresh()
        except TimeoutError:
            log.warning("initial DNS discovery timed out; serving and retrying in the background")
        self._spawn("discovery", self.discovery.run)
        self._spawn("health checks", self.health.run)
        if self.peers is not None:  # ready only once a peer replica's exclusions are in
            await self.peers.learn_own_addresses()
            token = self.settings.admin_token
            secret = token.get_secret_value() if token else None
            self._spawn(
                "peer exclusion sync",
                functools.partial(self.peers.sync_at_start, secret, self.exclusions.adopt),
            )
        if self.exclusions.shared:  # other workers may exclude backends: pick their changes up
            self._spawn(
                "exclusion sync",
                functools.partial(self.exclusions.run_sync, self.settings.health_interval_secs),
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
        for client in self._clients:
            await client.aclose()
        self.access_log.close()  # every request has finished: write its lines before exiting
        self.metrics.close()  # and export their counts

    def begin_shutdown(self) -> None:
        """Readiness fails from now on, so load balancers stop sending new traffic."""
        if not self.shutting_down:
            self.shutting_down = True
            log.info("shutdown started; draining in-flight requests")

    def _spawn(self, name: str, loop_fn: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, loop_fn)))

    async def _supervise(self, name: str, loop_fn: Callable[[], Awaitable[None]]) -> None:
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

    def refresh_gauges(self) -> None:
        members = self.pool.backends()
        counts = collections.Counter(b.health for b in members if b.ejection is None)
        ejected = sum(1 for b in members if b.ejection is not None)
        self.metrics.set_backend_counts(dict(counts), ejected=ejected)
        self.metrics.set_backend_load(members)
        self.metrics.routable.set(self.pool.routable_count)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()
