"""The processes behind the client-side hostile tests: DNS, one simulated node, the proxy."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from sim.dns import DNSServer
from sim.processes import NodeProcess, ProxyProcess, free_port_on_all

REPO = Path(__file__).parents[2]
NODE_IP = "127.0.0.2"
SERVICE = "hyperbytedb.test"

# Short client timeouts so the tests see them fire; everything else as in production.
SHORT_TIMEOUTS = {
    "CLIENT_HEADER_TIMEOUT_SECS": "1",
    "CLIENT_BODY_TIMEOUT_SECS": "1",
    "SEND_TIMEOUT_SECS": "1",
}


@dataclass
class Stack:
    node: NodeProcess
    proxy: ProxyProcess

    @property
    def host(self) -> str:
        return self.proxy.host

    @property
    def port(self) -> int:
        return self.proxy.port

    def node_requests(self) -> dict[str, int]:
        """Requests the node served per path since the last reset."""
        return dict(self.node.requests()["paths"])

    def reset_node(self) -> None:
        self.node.reset()

    def violations(self, limit: str) -> float:
        text = httpx.get(f"{self.proxy.url}/metrics", timeout=5, trust_env=False).text
        wanted = f'hyperbytedb_proxy_client_limit_violations_total{{limit="{limit}"}} '
        for line in text.splitlines():
            if line.startswith(wanted):
                return float(line.split()[-1])
        return 0.0


@contextlib.contextmanager
def client_stack(log_dir: Path, *, gunicorn_workers: int | None = None, **proxy_env: str) -> Iterator[Stack]:
    """A proxy in front of one node, both stopped on exit whatever happens.

    The proxy is ``python -m app``, or gunicorn with ``gunicorn_workers`` workers.
    """
    port = free_port_on_all((NODE_IP,))
    with DNSServer(host="127.0.0.1", port=0) as dns:
        dns.set_records(SERVICE, [NODE_IP])
        node = NodeProcess(NODE_IP, port, data_dir=log_dir / "node", log_dir=log_dir)
        env = {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(port),
            "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{dns.port}",
            "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.5",
            "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "1",
            "HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": "5",
            "LOG_FORMAT": "json",
            # Every path is forwarded: the tests read what arrived through the node's /_sim/ probes.
            "HYPERBYTEDB_PROXY_PUBLIC_PATHS": "*",
            **{f"HYPERBYTEDB_PROXY_{key.upper()}": value for key, value in proxy_env.items()},
        }
        argv = None
        if gunicorn_workers is not None:
            env["HYPERBYTEDB_PROXY_WORKERS"] = str(gunicorn_workers)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(log_dir / "prometheus")
            config = str(REPO / "gunicorn.conf.py")
            argv = [sys.executable, "-m", "gunicorn", "-c", config, "app.main:create_app_from_env()"]
        proxy = ProxyProcess(env, argv=argv, log_dir=log_dir)
        try:
            node.start().wait_ready()
            proxy.start().wait_ready(timeout=20)
            yield Stack(node, proxy)
        finally:
            proxy.stop()
            node.stop()
