"""Real processes on loopback: simulated HyperbyteDB nodes, a DNS server and the proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sim.dns import DNSServer
from sim.processes import NodeProcess, ProxyProcess, free_port_on_all

NODE_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SERVICE = "hyperbytedb.test"

pytestmark = pytest.mark.integration


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
def node_port() -> int:
    return free_port_on_all((*NODE_IPS, "127.0.0.5"))


@pytest.fixture
def nodes(tmp_path: Path, node_port: int, dns_server: DNSServer) -> Iterator[dict[str, NodeProcess]]:
    started: dict[str, NodeProcess] = {}
    try:
        for ip in NODE_IPS:
            node = NodeProcess(ip, node_port, data_dir=tmp_path / ip, log_dir=tmp_path)
            started[ip] = node.start()
        for node in started.values():
            node.wait_ready()
        dns_server.set_records(SERVICE, NODE_IPS)
        yield started
    finally:
        for node in started.values():
            node.stop()


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def start_proxy(tmp_path: Path, node_port: int, dns_server: DNSServer) -> Iterator[ProxyFactory]:
    """Start ``python -m app`` as a user would; stopped at teardown whatever happens."""
    proxies: list[ProxyProcess] = []

    def start(**overrides: str) -> ProxyProcess:
        env = {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(node_port),
            "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{dns_server.port}",
            "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.2",
            "HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS": "500",
            "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "0.3",
            "HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": "5",
            "HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS": "10",
            "LOG_FORMAT": "json",
        }
        env.update(
            {k if k.startswith("LOG_") else f"HYPERBYTEDB_PROXY_{k.upper()}": v for k, v in overrides.items()}
        )
        proxy = ProxyProcess(env, log_dir=tmp_path)
        proxies.append(proxy)
        proxy.start()
        proxy.wait_healthy()
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()


def backends_view(proxy: ProxyProcess) -> dict[str, str]:
    data = httpx.get(f"{proxy.url}/admin/backends", timeout=2).json()
    return {b["address"]: b["health"] for b in data["backends"]}
