"""Gunicorn configuration for the multi-worker mode of hyperbytedb-proxy.

    gunicorn -c gunicorn.conf.py 'app.main:create_app_from_env()'

The single-process mode (``hyperbytedb-proxy`` / ``python -m app``) does not
use this file. Here gunicorn only supervises N uvicorn workers that share one
listening socket; every worker builds its own app from the environment.

Everything comes from the same environment variables as the single-process
mode, parsed by :func:`app.settings.load_settings` (never re-parsed here):

    HYPERBYTEDB_PROXY_LISTEN               -> bind
    HYPERBYTEDB_PROXY_ADMIN_LISTEN         -> bind (a second address)
    HYPERBYTEDB_PROXY_WORKERS              -> workers
    HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS  -> graceful_timeout

Prometheus metrics of several processes need the client's multiprocess mode:
set ``PROMETHEUS_MULTIPROC_DIR`` to a writable directory (the Helm chart uses
``/tmp/prometheus`` on an emptyDir). The hooks below create and empty it when
the master starts, and mark a worker's files dead when the worker exits.

Importing this file needs only the project and its dependencies, not gunicorn:
a missing gunicorn or uvicorn-worker is reported when gunicorn starts.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from typing import Any

from app.__main__ import load_settings_or_exit

# One line per bad variable, no traceback, status 2: as `hyperbytedb-proxy` does.
_settings = load_settings_or_exit(metrics_dir_must_exist=False)  # on_starting creates it

# --- server socket -----------------------------------------------------------

bind = [str(_settings.listen)]  # "0.0.0.0:8086" or "[::]:8086"
if _settings.admin_listen is not None:
    # Every worker serves both sockets; the app tells them apart by local port.
    bind.append(str(_settings.admin_listen))

# --- workers ------------------------------------------------------------------

worker_class = "app.worker.ProxyWorker"
workers = _settings.workers

# Each worker runs its own event loop, background tasks and HTTP clients: the
# app must be created after the fork, never in the master.
preload_app = False

# Seconds a worker may go without notifying the master before it is killed and
# replaced. The uvicorn worker notifies from its event loop, so this bounds a
# blocked loop, not a slow request.
timeout = 30

# Drain after SIGTERM: the master forwards it to the workers and kills those
# still running after this many seconds. Gunicorn wants a whole number.
graceful_timeout = math.ceil(_settings.shutdown_grace_secs)

# Idle keep-alive of client connections: HYPERBYTEDB_PROXY_KEEPALIVE_TIMEOUT_SECS
# (the worker also sets it on uvicorn directly).
keepalive = _settings.keepalive_timeout_secs

# --- logging ------------------------------------------------------------------

# The app configures its own logging (text or JSON); gunicorn's own lines go to
# stderr and per-request access lines are left to the app.
errorlog = "-"
accesslog = None
loglevel = "debug" if _settings.log_level == "debug" else "info"

# --- read-only root filesystem -------------------------------------------------

# gunicorn >= 25.1 opens a control socket under $HOME by default; the proxy has
# no use for it and the image's root filesystem is read-only.
control_socket_disable = True

# Worker heartbeat files go to tempfile's default directory (TMPDIR=/tmp in the
# image), so worker_tmp_dir keeps its default.

# --- hooks --------------------------------------------------------------------


def on_starting(server: Any) -> None:
    """In the master, before any worker: check the worker class, reset shared state."""
    if importlib.util.find_spec("uvicorn_worker") is None:
        sys.exit("hyperbytedb-proxy: gunicorn needs the package uvicorn-worker (pip install uvicorn-worker)")

    # Operator exclusions are shared by this master's workers through a file
    # named after its pid; a previous master with the same pid (PID 1 in a
    # restarted container) must not hand its exclusions to this one.
    from app.exclusions import shared_exclusions_path

    directory = _settings.prometheus_multiproc_dir
    stale_name = f"hyperbytedb-proxy-exclusions-{os.getpid()}.json"
    shared_exclusions_path(directory).with_name(stale_name).unlink(missing_ok=True)

    if directory is None:
        if workers > 1:
            server.log.warning(
                "PROMETHEUS_MULTIPROC_DIR is not set: /metrics will show one worker's numbers only"
            )
        return
    # The directory may survive a container restart (an emptyDir lives as long
    # as the pod): files of processes that no longer exist would be summed in.
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    server.log.info("prometheus multiprocess directory %s reset", directory)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker exited: retire its live gauges."""
    if _settings.prometheus_multiproc_dir is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
