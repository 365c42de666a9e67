"""``python -m app`` and the ``hyperbytedb-proxy`` command: settings, logging, serve.

Everything that talks to the operator at startup lives here: a bad
environment prints one line per problem and exits 2, and prefixed variables
that no setting reads are logged as likely typos.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from app.settings import Settings, SettingsError, load_settings, unknown_variables
from app.tls import check_tls_settings, warn_about_tls

EXIT_CONFIG = 2


def load_settings_or_exit(
    environ: Mapping[str, str] | None = None, *, metrics_dir_must_exist: bool = True
) -> Settings:
    """Settings for a process about to serve; on a bad environment, one line per problem and exit 2.

    gunicorn's master creates the metrics directory itself, so it skips that check.
    """
    try:
        settings = load_settings(environ)
        check_tls_settings(settings)  # a certificate that does not load is a configuration error too
        if metrics_dir_must_exist:
            check_multiprocess_dir(settings)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"hyperbytedb-proxy: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return settings


def check_multiprocess_dir(settings: Settings) -> None:
    """prometheus-client writes every metric value under this directory: it must exist."""
    directory = settings.prometheus_multiproc_dir
    if directory is not None and not directory.is_dir():
        raise SettingsError(
            [f"PROMETHEUS_MULTIPROC_DIR={str(directory)!r} is invalid: expected an existing directory"]
        )


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log one warning per prefixed variable that no setting reads."""
    log = logging.getLogger("hyperbytedb_proxy")
    for name in unknown_variables(environ):
        log.warning("ignoring unknown setting", extra={"fields": {"variable": name}})


def configure_process() -> Settings:
    """Settings and logging for a process that serves the proxy; exits 2 on a bad environment."""
    from app.logs import setup_logging
    from app.proxy import UpstreamAborted

    settings = load_settings_or_exit()
    setup_logging(settings.log_format, settings.log_level, quiet_exceptions=(UpstreamAborted,))
    warn_unknown_variables(os.environ)
    warn_about_tls(settings)
    if settings.admin_open:
        logging.getLogger("hyperbytedb_proxy").warning(
            "admin listener without ADMIN_TOKEN: exclude/include need no token there; "
            "keep its port unreachable from clients",
            extra={"fields": {"admin_listen": str(settings.admin_listen)}},
        )
    return settings


def main() -> int:
    settings = configure_process()

    from app.main import create_app
    from app.server import ProxyServer, listen_sockets, listener_tls, uvicorn_config

    app = create_app(settings)
    server = ProxyServer(
        uvicorn_config(app, settings, on_violation=app.state.proxy.metrics.count_client_violation),
        on_stop=app.state.proxy.begin_shutdown,
        grace_secs=settings.shutdown_grace_secs,
        tls=listener_tls(settings),
    )
    try:
        sockets = listen_sockets(settings)
    except OSError as exc:
        print(f"hyperbytedb-proxy: cannot listen: {exc}", file=sys.stderr)
        return 1
    server.run(sockets=sockets)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
