"""Application factory: settings in, a ready-to-serve Starlette app out."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from app.admin import admin_routes
from app.discovery import Resolver, SystemResolver
from app.metrics import Metrics
from app.settings import Settings, load_settings, warn_unknown_variables
from app.state import ProxyState


def create_app(
    settings: Settings,
    *,
    forward_transport: httpx.AsyncBaseTransport | None = None,
    probe_transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """Build the proxy; every external dependency can be replaced (tests use respx and fakes)."""
    state = ProxyState(
        settings,
        resolver=resolver or SystemResolver(settings.dns_nameservers),
        forward_transport=forward_transport,
        probe_transport=probe_transport,
        metrics=metrics,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with state.running():
            yield

    routes = [*admin_routes(state), Route("/{path:path}", state.proxy)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.proxy = state
    return app


def create_app_from_env() -> Starlette:
    """Factory for servers that import the app by name (gunicorn, ``uvicorn --factory``).

    Such a server owns the process, so this also sets up logging; a bad
    environment raises :class:`~app.settings.SettingsError` naming each problem.
    """
    from app.logs import setup_logging
    from app.proxy import UpstreamAborted

    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level, quiet_exceptions=(UpstreamAborted,))
    warn_unknown_variables(os.environ)
    return create_app(settings)
