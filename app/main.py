"""Application factory: settings in, a ready-to-serve Starlette app out."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.access_log import AccessLog
from app.admin import admin_routes
from app.discovery import Resolver, SystemResolver
from app.metrics import Metrics
from app.settings import Settings, load_settings_or_exit, warn_unknown_variables
from app.state import ProxyState


def create_app(
    settings: Settings,
    *,
    forward_transport: httpx.AsyncBaseTransport | None = None,
    probe_transport: httpx.AsyncBaseTransport | None = None,
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
        metrics=metrics,
        access_log=access_log,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with state.running():
            yield

    admin = admin_routes(state)
    routes = [*admin, Route("/{path:path}", state.proxy)]
    app = ProxyApp(routes=routes, lifespan=lifespan)
    app.state.proxy = state
    app.fast_path(state.proxy, admin_prefixes=tuple(route.path.split("{")[0] for route in admin))
    return app


class ProxyApp(Starlette):
    """Starlette, with proxied requests sent straight to the catch-all endpoint.

    Routing and the middleware stack are about a tenth of a proxied request's
    cost, and for any path outside the admin prefixes the router would pick
    the catch-all anyway.  Admin paths, lifespan and anything else still go
    through Starlette.
    """

    _proxy: ASGIApp | None = None
    _admin_prefixes: tuple[str, ...] = ()

    def fast_path(self, proxy: ASGIApp, *, admin_prefixes: tuple[str, ...]) -> None:
        self._proxy = proxy
        self._admin_prefixes = admin_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._proxy is not None
            and scope["type"] == "http"
            and not scope["path"].startswith(self._admin_prefixes)
        ):
            await self._proxy(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def configure_process() -> Settings:
    """Settings and logging for a process that serves the proxy; exits 2 on a bad environment."""
    from app.logs import setup_logging
    from app.proxy import UpstreamAborted

    settings = load_settings_or_exit()
    setup_logging(settings.log_format, settings.log_level, quiet_exceptions=(UpstreamAborted,))
    warn_unknown_variables(os.environ)
    return settings


def create_app_from_env() -> Starlette:
    """Factory for servers that import the app by name (gunicorn, ``uvicorn --factory``).

    Such a server owns the process, so this also configures it (logging included).
    """
    return create_app(configure_process())
