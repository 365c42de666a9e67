"""nginx, twice: the fixed-response backend and the reverse proxy we compare against.

Everything nginx writes (pid file, temp files, error log) stays in a
directory of its own; it runs in the foreground with one worker, without an
access log unless the row says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from sim.processes import ManagedProcess, wait_for_port

QUERY_BODY = (
    '{"results":[{"statement_id":0,"series":[{"name":"cpu","columns":["time","value"],"values":[[0,1]]}]}]}'
)
HEALTH_BODY = '{"status":"pass"}'


def _common(directory: Path) -> str:
    # As root, workers would otherwise run as "nobody" and could not use the 0700 temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process on;
worker_processes 1;
{user}pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    server_tokens off;
{temp}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_max_body_size 32m;
    client_body_buffer_size 128k;
"""


def backend_config(directory: Path, host: str, port: int) -> str:
    """Fixed answers for /query, /write, /health and /ping; nginx reads and discards write bodies."""
    return (
        _common(directory)
        + f"""    server {{
        listen {host}:{port} backlog=4096;
        location = /query {{ default_type application/json; return 200 '{QUERY_BODY}'; }}
        location = /write {{ return 204; }}
        location = /health {{ default_type application/json; return 200 '{HEALTH_BODY}'; }}
        location = /ping {{ return 204; }}
        location / {{ return 404; }}
    }}
}}
"""
    )


def reverse_proxy_config(
    directory: Path,
    host: str,
    port: int,
    backend: tuple[str, int],
    stream_backend: tuple[str, int],
    *,
    access_log: bool = False,
) -> str:
    """nginx as the reverse proxy people deploy: keep-alive upstream, HTTP/1.1 both ways.

    Small requests use nginx's defaults (``proxy_buffering on``).  The stream is
    relayed under ``/_sim/`` with ``proxy_buffering off`` -- the way nginx is set
    up in front of streaming APIs, and the mode comparable to ours (bounded
    memory, no spooling to disk) -- and under ``/buffered/`` with buffering on,
    for reference.

    With ``access_log``, nginx logs every request as it does out of the box
    (``combined`` format, one unbuffered write per request, to a file).
    """
    log = f"access_log {directory / 'access.log'};" if access_log else ""
    upstream = 'proxy_http_version 1.1; proxy_set_header Connection "";'
    return (
        _common(directory)
        + f"""    upstream backend {{
        server {backend[0]}:{backend[1]};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    upstream stream_backend {{
        server {stream_backend[0]}:{stream_backend[1]};
        keepalive 8;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        {log}
        location / {{ proxy_pass http://backend; {upstream} }}
        location /_sim/ {{ proxy_pass http://stream_backend; {upstream} proxy_buffering off; }}
        location /buffered/ {{ proxy_pass http://stream_backend/; {upstream} proxy_buffering on; }}
    }}
}}
"""
    )


class NginxProcess(ManagedProcess):
    """One foreground nginx (master + one worker) with its own prefix directory."""

    kind = "nginx"

    def __init__(
        self, binary: str, directory: Path, config: str, host: str, port: int, *, label: str
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.host = host
        self.port = port
        directory.mkdir(parents=True, exist_ok=True)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / kind).mkdir(exist_ok=True)
        self.config_path = directory / "nginx.conf"
        self.config_path.write_text(config)
        super().__init__(log_dir=directory, label=label)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        # -e: the error log before the config is read; the default path may not be writable.
        return [
            self.binary,
            "-p",
            f"{self.directory}/",
            "-c",
            str(self.config_path),
            "-e",
            str(self.directory / "error.log"),
        ]

    def wait_ready(self, timeout: float = 10.0) -> NginxProcess:
        try:
            wait_for_port(self.host, self.port, timeout)
        except TimeoutError:
            self._ensure_alive()
            raise
        self._ensure_alive()
        return self

    def error_log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.directory / "error.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
