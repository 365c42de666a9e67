"""Application factory: settings in, a ready-to-serve Starlette app out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.access_log import AccessLog
from app.admin import admin_routes
from app.backend import Backend
from app.discovery import Discovery, Resolver, SystemResolver
from app.exclusions import ExclusionStore, OperatorExclusions, shared_exclusions_path
from app.forwarder import Forwarder, HttpxForwarder
from app.health import HealthChecker, transition_logger
from app.metrics import Metrics
from app.outlier import OutlierDetector
from app.peers import PeerFleet
from app.pool import BackendPool
from app.proxy import ProxyEndpoint
from app.retry_budget import RetryBudget
from app.settings import Settings
from app.state import Closeable, ProxyState
from app.tls import backend_context
from app.transport import UpstreamTransport

PROBE_USER_AGENT = "hyperbytedb-proxy-health/0.1"


def create_app(
    settings: Settings,
    *,
    forward_transport: httpx.AsyncBaseTransport | None = None,
    forwarder: Forwarder | None = None,
    probe_transport: httpx.AsyncBaseTransport | None = None,
    peer_transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    metrics: Metrics | None = None,
    access_log: AccessLog | None = None,
) -> Starlette:
    """Build the proxy; every external dependency can be replaced (tests use respx and fakes).

    The forward goes through ``forwarder`` when given, else through
    ``forward_transport`` (any httpx transport), else through the builtin
    :class:`UpstreamTransport`.

    This is the one place where the pieces are built and connected; each of
    them only knows what it is handed.
    """
    resolver = resolver or SystemResolver(settings.dns_nameservers)
    metrics = metrics or Metrics(multiprocess_dir=settings.prometheus_multiproc_dir)
    access_log = access_log or AccessLog(settings.log_format, on_drop=metrics.access_log_dropped.inc)
    tls = backend_context(settings)
    tls_name = settings.backend_tls_name if tls is not None else None

    pool = BackendPool(
        settings.backend_port, scheme="http" if tls is None else "https", lb_policy=settings.lb_policy
    )
    pool.add_listener(transition_logger(metrics))
    if forwarder is None and forward_transport is not None:
        forwarder = HttpxForwarder(forward_transport)  # respx, httpx.MockTransport, httpcore
    elif forwarder is None:
        forwarder = UpstreamTransport(
            ssl_context=tls,
            server_hostname=tls_name,
            max_header_bytes=settings.backend_max_header_bytes,
            max_headers=settings.backend_max_headers,
        )
    probe_client = httpx.AsyncClient(
        transport=probe_transport,
        timeout=settings.health_timeout_ms / 1000,
        headers={"User-Agent": PROBE_USER_AGENT},
        follow_redirects=False,
        verify=tls if tls is not None else True,
        trust_env=False,
    )
    clients: list[Closeable] = [forwarder, probe_client]
    outlier = OutlierDetector(
        pool,
        consecutive_failures=settings.outlier_consecutive_failures,
        ejection_secs=settings.outlier_ejection_secs,
        max_ejected_percent=settings.outlier_max_ejected_percent,
        on_eject=lambda backend, kind: metrics.outlier_ejections.labels(kind.value).inc(),
    )
    retry_budget = RetryBudget(
        percent=settings.retry_budget_percent,
        min_per_sec=settings.retry_budget_min_per_sec,
        window_secs=settings.retry_budget_window_secs,
    )
    proxy = ProxyEndpoint(
        settings, pool, forwarder, metrics, retry_budget, outlier=outlier, access_log=access_log
    )
    health = HealthChecker(settings, pool, probe_client, metrics, tls_name=tls_name)
    store = ExclusionStore(
        shared_exclusions_path(settings.prometheus_multiproc_dir) if settings.workers > 1 else None
    )
    exclusions = OperatorExclusions(store, pool)

    def on_added(backends: Sequence[Backend]) -> None:
        exclusions.on_added(backends)
        health.probe_soon(backends)

    def on_removed(backends: Sequence[Backend]) -> None:
        exclusions.on_removed(backends)
        for backend in backends:
            outlier.forget(backend)
            forwarder.forget(backend.address, backend.port)

    discovery = Discovery(settings, pool, resolver, metrics, on_added=on_added, on_removed=on_removed)
    peers = None
    if settings.peer_service is not None:
        # Replicas that share exclusions; their calls get a client of their own.
        peer_client = httpx.AsyncClient(transport=peer_transport, trust_env=False, follow_redirects=False)
        clients.append(peer_client)
        peers = PeerFleet(settings, resolver, peer_client)
    state = ProxyState(
        settings,
        metrics=metrics,
        access_log=access_log,
        pool=pool,
        proxy=proxy,
        outlier=outlier,
        health=health,
        discovery=discovery,
        exclusions=exclusions,
        peers=peers,
        clients=tuple(clients),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with state.running():
            yield

    admin = admin_routes(state)
    handlers = {404: _not_found, 405: _not_allowed}
    if settings.admin_listen is None:
        routes = [*admin, Route("/{path:path}", state.proxy)]
        app = ProxyApp(routes=routes, lifespan=lifespan, exception_handlers=handlers)
        app.fast_path(state.proxy, admin_prefixes=tuple(route.path.split("{")[0] for route in admin))
    else:
        # Two listeners, one app: the admin port gets only the admin routes,
        # every other port only the proxy (and so only the public paths).
        app = ProxyApp(routes=admin, lifespan=lifespan, exception_handlers=handlers)
        app.split_listeners(state.proxy, admin_port=settings.admin_listen.port)
    app.state.proxy = state
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "not found"}, status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "method not allowed"}, status_code=405)


class ProxyApp(Starlette):
    """Starlette, with proxied requests sent straight to the catch-all endpoint.

    Routing and the middleware stack are about a tenth of a proxied request's
    cost, and for any path outside the admin prefixes the router would pick
    the catch-all anyway.  Admin paths, lifespan and anything else still go
    through Starlette.
    """

    _proxy: ASGIApp | None = None
    _admin_prefixes: tuple[str, ...] = ()
    _admin_port: int | None = None

    def fast_path(self, proxy: ASGIApp, *, admin_prefixes: tuple[str, ...]) -> None:
        self._proxy = proxy
        self._admin_prefixes = admin_prefixes

    def split_listeners(self, proxy: ASGIApp, *, admin_port: int) -> None:
        """Serve the router on ``admin_port`` only and the proxy on every other port.

        The port is the one the connection arrived on (``scope["server"]``),
        so one process can listen on both sockets, under uvicorn or gunicorn.
        """
        self._proxy = proxy
        self._admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._proxy is not None and scope["type"] == "http":
            if self._admin_port is None:
                if not scope["path"].startswith(self._admin_prefixes):
                    await self._proxy(scope, receive, send)
                    return
            else:
                server = scope.get("server")
                if server is None or server[1] != self._admin_port:
                    await self._proxy(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def create_app_from_env() -> Starlette:
    """Factory for servers that import the app by name (gunicorn, ``uvicorn --factory``).

    Such a server owns the process, so this also configures it (logging included).
    """
    from app.__main__ import configure_process

    return create_app(configure_process())
