"""Application factory: settings in, a ready-to-serve Starlette app out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.access_log import AccessLog
from app.admin import admin_routes
from app.discovery import Resolver, SystemResolver
from app.metrics import Metrics
from app.settings import Settings
from app.state import ProxyState


def create_app(
    settings: Settings,
    *,
    forward_transport: httpx.AsyncBaseTransport | None = None,
    probe_transport: httpx.AsyncBaseTransport | None = None,
    peer_transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    metrics: Metrics | None = None,
    access_log: AccessLog | None = None,
) -> Starlette:
    """Build the proxy; every external dependency can be replaced (tests use respx and fakes)."""
    state = ProxyState(
        settings,
        resolver=resolver or SystemResolver(settings.dns_nameservers),
        forward_transport=forward_transport,
        probe_transport=probe_transport,
        peer_transport=peer_transport,
        metrics=metrics,
        access_log=access_log,
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
