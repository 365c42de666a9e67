"""``python -m app`` and the ``hyperbytedb-proxy`` command: settings, logging, serve."""

from __future__ import annotations

import os
import sys

from app.main import create_app
from app.settings import SettingsError, check_multiprocess_dir, load_settings, warn_unknown_variables

EXIT_CONFIG = 2


def main() -> int:
    try:
        settings = load_settings()
        check_multiprocess_dir(os.environ)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"hyperbytedb-proxy: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG

    # Imported after the settings check so a bad environment fails fast and quietly.
    from app.logs import setup_logging
    from app.proxy import UpstreamAborted
    from app.server import ProxyServer, uvicorn_config

    setup_logging(settings.log_format, settings.log_level, quiet_exceptions=(UpstreamAborted,))
    warn_unknown_variables(os.environ)

    app = create_app(settings)
    server = ProxyServer(
        uvicorn_config(app, settings),
        on_stop=app.state.proxy.begin_shutdown,
        grace_secs=settings.shutdown_grace_secs,
    )
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
