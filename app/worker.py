"""A gunicorn worker that serves the proxy exactly as ``python -m app`` does.

uvicorn-worker's stock worker would add uvicorn's own Server and Date
headers, trust X-Forwarded-For from peers and keep readiness green during a
drain; this one reuses the single-process server's configuration instead.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from app.server import SERVER_OPTIONS, ProxyServer, listener_tls, settings_options


# uvicorn-worker ships no type information, so its worker class is Any to mypy.
class ProxyWorker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "uvloop", **SERVER_OPTIONS}

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        state = self.wsgi.state.proxy
        grace = state.settings.shutdown_grace_secs
        # The worker's Config was built before the app was loaded; the
        # protocol and keep-alive need the app's settings and metrics.
        for name, value in settings_options(state.settings, state.metrics.count_client_violation).items():
            setattr(self.config, name, value)
        # Built here, after the fork: each worker reloads rotated certificates itself.
        tls = listener_tls(state.settings)
        server = ProxyServer(self.config, on_stop=state.begin_shutdown, grace_secs=grace, tls=tls)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
