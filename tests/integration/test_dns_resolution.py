"""The system resolver against a real DNS server on loopback: search domains, ndots, AAAA, IPv6 backends."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from app.addresses import HostPort
from app.discovery import LookupFailed, SystemResolver
from sim.dns import DNSServer
from sim.processes import NodeProcess, ProxyProcess

pytestmark = pytest.mark.integration


def _resolv_conf(tmp_path: Path, port: int) -> Path:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "nameserver 127.0.0.1\nsearch db.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
    return conf


def test_kubernetes_short_name_resolves_through_search_domains(tmp_path: Path) -> None:
    with DNSServer(host="127.0.0.1", port=0) as server:
        server.set_records("hyperbytedb-headless.db.svc.cluster.local", ["127.0.0.2", "127.0.0.3", "::1"])
        resolver = SystemResolver(
            [HostPort("127.0.0.1", server.port)],
            resolv_conf=_resolv_conf(tmp_path, server.port),
            hosts_file=tmp_path / "no-hosts",
        )

        async def lookups() -> tuple[list[str], list[str], list[str]]:
            short = await resolver.resolve("hyperbytedb-headless")
            namespaced = await resolver.resolve("hyperbytedb-headless.db")  # fewer dots than ndots
            absolute = await resolver.resolve("hyperbytedb-headless.db.svc.cluster.local.")
            return short, namespaced, absolute

        short, namespaced, absolute = asyncio.run(lookups())
    assert sorted(short) == sorted(namespaced) == sorted(absolute) == ["127.0.0.2", "127.0.0.3", "::1"]


def test_unknown_name_is_a_failed_lookup(tmp_path: Path) -> None:
    with DNSServer(host="127.0.0.1", port=0) as server:
        resolver = SystemResolver(
            [HostPort("127.0.0.1", server.port)],
            resolv_conf=_resolv_conf(tmp_path, server.port),
            hosts_file=tmp_path / "no-hosts",
        )
        with pytest.raises(LookupFailed):
            asyncio.run(resolver.resolve("nothing-here"))


def test_ipv6_backend_and_listener(tmp_path: Path) -> None:
    with DNSServer(host="127.0.0.1", port=0) as server:
        server.set_records("v6.test", ["::1"])
        port = _free_v6_port()
        node = NodeProcess("::1", port, log_dir=tmp_path)
        proxy = ProxyProcess(
            {
                "HYPERBYTEDB_PROXY_BACKEND_SERVICE": "v6.test",
                "HYPERBYTEDB_PROXY_BACKEND_PORT": str(port),
                "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{server.port}",
                "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.3",
            },
            listen=f"[::1]:{_free_v6_port()}",
            log_dir=tmp_path,
        )
        try:
            node.start().wait_ready()
            proxy.start().wait_ready()
            r = httpx.post(f"{proxy.url}/write?db=v6", content=b"m v=1 1", timeout=5)
            assert r.status_code == 204
            view = httpx.get(f"{proxy.url}/admin/backends", timeout=5).json()["backends"]
            assert [(b["address"], b["health"]) for b in view] == [("::1", "active")]
            assert node.point_count() == 1
        finally:
            proxy.stop()
            node.stop()


def _free_v6_port() -> int:
    import socket

    for _ in range(20):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
            port = sock.getsockname()[1]
        if port:
            time.sleep(0)
            return port
    raise AssertionError("no free IPv6 port")
