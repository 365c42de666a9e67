"""uvicorn, configured for a proxy and taught to drain cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import math
import os
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from app.addresses import HostPort
from app.http_protocol import ClientLimits, limited_protocol
from app.settings import Settings
from app.tls import CertificateReloader, listener_context

log = logging.getLogger("hyperbytedb_proxy")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WATCHDOG_MARGIN_SECS = 5.0


def http_protocol(settings: Settings, on_violation: Callable[[str], None]) -> Callable[..., asyncio.Protocol]:
    """uvicorn's httptools protocol bounded by the client-side limits (both servers use it).

    There is no h11 fallback: h11 cannot enforce the timeouts, and httptools
    is a dependency (uvicorn[standard]) wherever the proxy installs.
    """
    return limited_protocol(ClientLimits.from_settings(settings), on_violation)


# What the proxy changes from uvicorn's defaults, under uvicorn and gunicorn alike.
SERVER_OPTIONS: dict[str, Any] = {
    "lifespan": "on",
    "access_log": False,
    "server_header": False,  # the client sees the backend's Server and Date, once
    "date_header": False,
    "proxy_headers": False,  # X-Forwarded-For must name the real peer
}


def settings_options(settings: Settings, on_violation: Callable[[str], None]) -> dict[str, Any]:
    """The server options that come from the settings; ``on_violation`` counts each client-side limit hit."""
    return {
        "http": http_protocol(settings, on_violation),
        "timeout_keep_alive": settings.keepalive_timeout_secs,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_secs),
    }


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, on_violation: Callable[[str], None]
) -> uvicorn.Config:
    """The proxy's uvicorn configuration."""
    fast = importlib.util.find_spec("uvloop") is not None
    return uvicorn.Config(
        app,
        host=settings.listen.host,
        port=settings.listen.port,
        loop="uvloop" if fast else "asyncio",
        log_config=None,
        **SERVER_OPTIONS,
        **settings_options(settings, on_violation),
    )


def listener_tls(settings: Settings) -> CertificateReloader | None:
    """The listeners' TLS context, wrapped in the reloader that keeps it current; None for plain HTTP."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ctx = listener_context(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    files = (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    return CertificateReloader(ctx, *files)


def use_tls(config: uvicorn.Config, ctx: ssl.SSLContext) -> None:
    """Hand uvicorn our own context (it would otherwise build one from file names, without rotation)."""
    config.ssl_context_factory = lambda _config, _default: ctx


def bind(address: HostPort) -> socket.socket:
    """A listening socket as uvicorn would bind it, for serving several addresses from one server."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listen_sockets(settings: Settings) -> list[socket.socket] | None:
    """Both listeners' sockets when ADMIN_LISTEN is set; None lets uvicorn bind LISTEN itself."""
    if settings.admin_listen is None:
        return None
    public = bind(settings.listen)
    try:
        return [public, bind(settings.admin_listen)]
    except OSError:
        public.close()
        raise


class ProxyServer(uvicorn.Server):
    """Marks the app not-ready the moment a stop signal arrives, and exits 0 after a clean drain."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_stop: Callable[[], None],
        grace_secs: float,
        tls: CertificateReloader | None = None,
    ) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._grace = grace_secs
        self._watchdog: threading.Timer | None = None
        self._tls = tls
        self._tls_task: asyncio.Task[None] | None = None
        if tls is not None:
            use_tls(config, tls.ctx)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._tls is not None and self.started:
            self._tls_task = asyncio.create_task(self._tls.run())
        # Everything alive now (modules, the app, settings) lives as long as
        # the process: moved out of the collector's reach, full collections
        # stop scanning it, which removed most of the p99 latency tail.
        gc.collect()
        gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._tls_task is not None:
            self._tls_task.cancel()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("stop signal received", extra={"fields": {"signal": signal.Signals(sig).name}})
            self._on_stop()
            self._start_watchdog()
        super().handle_exit(sig, frame)

    def _start_watchdog(self) -> None:
        """If the drain wedges despite uvicorn's own timeout, end the process anyway."""

        def expire() -> None:
            log.error("shutdown grace elapsed; forcing exit")
            logging.shutdown()
            os._exit(1)

        self._watchdog = threading.Timer(self._grace + WATCHDOG_MARGIN_SECS, expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after shutdown, which would
        # make a clean drain exit 143 instead of 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
            if self._watchdog is not None:
                self._watchdog.cancel()
