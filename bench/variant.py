"""Our proxy app forwarding through httpx's default transport (httpcore) instead of the builtin one.

Run by ``python -m bench`` as the "ours (httpcore transport)" target, with the
same environment as ``python -m app``: the comparison that justifies
``app.transport.UpstreamTransport``.
"""

from __future__ import annotations

import os
import sys

import httpx
import uvicorn

from app.logs import setup_logging
from app.main import create_app
from app.proxy import UpstreamAborted
from app.server import uvicorn_config
from app.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"bench.variant: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format, settings.log_level, quiet_exceptions=(UpstreamAborted,))
    transport = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256)
    )
    app = create_app(settings, forward_transport=transport)
    server = uvicorn.Server(
        uvicorn_config(app, settings, on_violation=app.state.proxy.metrics.count_client_violation)
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
