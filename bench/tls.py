"""TLS forwarding rows: ours and nginx, each in front of the same TLS backend.

    wrk -> nginx reverse proxy  127.0.0.3:*  -(proxy_ssl, verified, keep-alive)-> 127.0.0.6:T
    wrk -> ours                 127.0.0.1:*  -(BACKEND_TLS, verified)-----------> 127.0.0.6:T

The backend is the fixed-answer nginx with ``listen ... ssl``; its certificate
names a DNS name, never the IP, and both proxies verify it against a CA made
for the run and send that name as SNI, as they would in front of HyperbyteDB
pods whose certificates name the headless Service.  Clients speak plain HTTP
to both proxies: the rows measure TLS on the backend hop only.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import report
from bench.nginx import NginxProcess, _common, backend_config
from sim.processes import ProxyProcess, free_port

if TYPE_CHECKING:
    from bench.cli import Bench

TLS_BACKEND_HOST = "127.0.0.6"
NGINX_HOST = "127.0.0.3"
SERVER_NAME = "hyperbytedb-bench.test"
NGINX_TLS = "TLS: nginx (proxy_ssl) -> TLS backend"
OURS_TLS = "TLS: ours (BACKEND_TLS) -> TLS backend"
OPENSSL_TIMEOUT = 30


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, openssl: str = "openssl") -> Certificates:
    """A CA and a server certificate for SERVER_NAME (EC P-256, valid two days)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, csr, ext = (directory / name for name in ("server.crt", "server.key", "server.csr", "ext.cnf"))
    ext.write_text(
        f"basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVER_NAME}\n"
    )
    commands = [
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
         "-out", str(csr), "-subj", f"/CN={SERVER_NAME}"],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", "2",
         "-days", "2", "-out", str(cert), "-extfile", str(ext)],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([openssl, *command], check=True, capture_output=True, timeout=OPENSSL_TIMEOUT)
    return Certificates(ca, cert, key)


def tls_backend_config(directory: Path, host: str, port: int, certs: Certificates) -> str:
    """The fixed-answer backend, served over TLS 1.2/1.3 with session resumption."""
    plain = f"listen {host}:{port} backlog=4096;"
    tls = (
        f"listen {host}:{port} ssl backlog=4096;\n"
        f"        ssl_certificate {certs.cert};\n"
        f"        ssl_certificate_key {certs.key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        ssl_session_cache shared:bench_tls:1m;"
    )
    config = backend_config(directory, host, port)
    assert plain in config
    return config.replace(plain, tls)


def tls_reverse_proxy_config(
    directory: Path, host: str, port: int, backend: tuple[str, int], ca: Path
) -> str:
    """nginx proxying to the TLS backend as one would configure it: verified, SNI, keep-alive."""
    ssl = (
        'proxy_http_version 1.1; proxy_set_header Connection ""; '
        f"proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_name {SERVER_NAME}; "
        "proxy_ssl_server_name on; proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.2 TLSv1.3;"
    )
    return (
        _common(directory)
        + f"""    upstream tls_backend {{
        server {backend[0]}:{backend[1]};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{ proxy_pass https://tls_backend; {ssl} }}
    }}
}}
"""
    )


def tls_phase(bench: Bench, started: Callable[[NginxProcess], NginxProcess]) -> list[str]:
    """Measure both TLS rows; return the comparison lines (ours / nginx, per scenario and connections)."""
    certs = make_certificates(bench.workdir / "tls")
    port = free_port(TLS_BACKEND_HOST)
    directory = bench.workdir / "nginx-tls-backend"
    backend = started(
        NginxProcess(
            bench.tools["nginx"],
            directory,
            tls_backend_config(directory, TLS_BACKEND_HOST, port, certs),
            TLS_BACKEND_HOST,
            port,
            label="tls-backend",
        )
    )
    try:

        def nginx() -> NginxProcess:
            rp_dir = bench.workdir / "nginx-tls-rp"
            rp_port = free_port(NGINX_HOST)
            config = tls_reverse_proxy_config(rp_dir, NGINX_HOST, rp_port, (TLS_BACKEND_HOST, port), certs.ca)
            return started(
                NginxProcess(bench.tools["nginx"], rp_dir, config, NGINX_HOST, rp_port, label="tls-rp")
            )

        def ours() -> ProxyProcess:
            return bench.start_ours(
                backend=(TLS_BACKEND_HOST, port),
                env={
                    "HYPERBYTEDB_PROXY_BACKEND_TLS": "true",
                    "HYPERBYTEDB_PROXY_BACKEND_CA_FILE": str(certs.ca),
                    "HYPERBYTEDB_PROXY_BACKEND_SERVER_NAME": SERVER_NAME,
                },
            )

        bench._run_target(NGINX_TLS, nginx)
        bench._run_target(OURS_TLS, ours)
    finally:
        backend.stop(timeout=10)
    return comparison(bench.rows, bench.scenarios, bench.args.connections)


def comparison(rows: list[report.Row], scenarios: list[str], connections: list[int]) -> list[str]:
    lines = ["TLS to the backend (verified, SNI, keep-alive), ours vs nginx proxy_ssl:", ""]
    body = []
    for scenario in scenarios:
        for conns in connections:
            ours = report._find(rows, OURS_TLS, scenario, conns)
            nginx = report._find(rows, NGINX_TLS, scenario, conns)
            plain = report._find(rows, report.OURS, scenario, conns)
            if ours is None or nginx is None or ours.wrk is None or nginx.wrk is None:
                continue
            tls_cost = (
                f"{ours.wrk.rps / plain.wrk.rps:.2f}"
                if plain is not None and plain.wrk and plain.wrk.rps
                else "-"
            )
            body.append(
                [
                    scenario,
                    str(conns),
                    f"{ours.wrk.rps:,.0f}",
                    f"{nginx.wrk.rps:,.0f}",
                    f"{ours.wrk.rps / nginx.wrk.rps:.3f}" if nginx.wrk.rps else "-",
                    tls_cost,
                    report._num(ours.wrk.p99_ms, ms=True),
                    report._num(nginx.wrk.p99_ms, ms=True),
                ]
            )
    if not body:
        return []
    headers = [
        "scenario",
        "conns",
        "ours req/s",
        "nginx req/s",
        "ours/nginx",
        "ours TLS/plain",
        "ours p99",
        "nginx p99",
    ]
    return lines + report._table(headers, body)
