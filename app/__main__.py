"""``python -m app`` and the ``hyperbytedb-proxy`` command: settings, logging, serve."""

from __future__ import annotations

import sys

from app.main import configure_process, create_app


def main() -> int:
    settings = configure_process()  # exits 2, one line per problem, on a bad environment

    from app.server import ProxyServer, listen_sockets, listener_tls, uvicorn_config

    app = create_app(settings)
    server = ProxyServer(
        uvicorn_config(app, settings),
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
