"""Exclusions reach every proxy replica: three proxies on loopback behind one DNS name.

Each replica listens on its own 127.0.0.x address and the same port, as pods
do, and finds the others through ``PEER_SERVICE`` served by the test's DNS
server.  The timings printed (run with ``-s``) are how long it took until
every replica stopped routing to the excluded node.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sim.dns import DNSServer
from sim.processes import NodeProcess, ProxyProcess, free_port_on_all, stop_all

from .conftest import SERVICE

pytestmark = pytest.mark.integration

PEERS = "proxies.test"
PROXY_IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
TOKEN = "fleet-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXCLUDED = "127.0.0.3"

Replicas = Callable[..., dict[str, ProxyProcess]]


@pytest.fixture
def replicas(tmp_path: Path, node_port: int, dns_server: DNSServer) -> Iterator[Replicas]:
    """Build proxy replicas (not started) on PROXY_IPS sharing one port; all stopped at teardown."""
    port = free_port_on_all((*PROXY_IPS, "127.0.0.14"))
    made: list[ProxyProcess] = []

    def build(ips: tuple[str, ...] = PROXY_IPS, **overrides: str) -> dict[str, ProxyProcess]:
        env = {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(node_port),
            "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{dns_server.port}",
            "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.2",
            "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "0.3",
            "HYPERBYTEDB_PROXY_PEER_SERVICE": PEERS,
            "HYPERBYTEDB_PROXY_PEER_TIMEOUT_SECS": "20",
            "HYPERBYTEDB_PROXY_ADMIN_TOKEN": TOKEN,
            "LOG_FORMAT": "json",
            **{f"HYPERBYTEDB_PROXY_{k.upper()}": v for k, v in overrides.items()},
        }
        built = {ip: ProxyProcess(env, listen=f"{ip}:{port}", log_dir=tmp_path) for ip in ips}
        made.extend(built.values())
        return built

    try:
        yield build
    finally:
        stop_all(made)


def excluded_on(proxy: ProxyProcess) -> bool | None:
    backends = httpx.get(f"{proxy.url}/admin/backends", timeout=2, trust_env=False).json()["backends"]
    flags = [b["excluded"] for b in backends if b["address"] == EXCLUDED]
    return flags[0] if flags else None


def nodes_written(proxy: ProxyProcess, writes: int) -> set[str]:
    """Which nodes answered ``writes`` writes sent through ``proxy``."""
    seen: set[str] = set()
    with httpx.Client(timeout=5, trust_env=False) as http:
        for index in range(writes):
            response = http.post(f"{proxy.url}/write?db=d", content=f"cpu v=1 {time.time_ns() + index}")
            assert response.status_code == 204, response.text
            seen.add(response.headers["x-sim-node"])
    return seen


def start_all(proxies: dict[str, ProxyProcess]) -> None:
    for proxy in proxies.values():
        proxy.start()
    for proxy in proxies.values():
        proxy.wait_ready(timeout=30)


def test_an_exclusion_accepted_by_one_replica_is_applied_by_all(
    nodes: dict[str, NodeProcess], dns_server: DNSServer, replicas: Replicas
) -> None:
    proxies = replicas()
    dns_server.set_records(PEERS, PROXY_IPS)
    start_all(proxies)
    first, *others = proxies.values()
    excluded_name = nodes[EXCLUDED].name

    started = time.monotonic()
    response = httpx.post(f"{first.url}/admin/backends/{EXCLUDED}/exclude", headers=AUTH, timeout=30)
    answered = time.monotonic() - started
    assert response.status_code == 200, response.text
    # Answered only once every replica applied it: no polling needed.
    assert [excluded_on(proxy) for proxy in proxies.values()] == [True, True, True]
    print(f"\nexclusion applied on all 3 replicas; caller answered after {answered * 1000:.1f} ms")
    for proxy in proxies.values():
        assert excluded_name not in nodes_written(proxy, 12)

    response = httpx.post(f"{others[0].url}/admin/backends/{EXCLUDED}/include", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert [excluded_on(proxy) for proxy in proxies.values()] == [False, False, False]


def test_a_replica_restarting_during_an_exclusion_gets_it(
    nodes: dict[str, NodeProcess], dns_server: DNSServer, replicas: Replicas
) -> None:
    proxies = replicas()
    dns_server.set_records(PEERS, PROXY_IPS)
    start_all(proxies)
    first, _, restarting = proxies.values()
    restarting.stop()  # still listed in DNS, as a pod being restarted is

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        call = pool.submit(
            httpx.post, f"{first.url}/admin/backends/{EXCLUDED}/exclude", headers=AUTH, timeout=30
        )
        time.sleep(1.0)
        assert not call.done(), "answered before the restarting replica applied the exclusion"
        restarting.start()
        response = call.result(timeout=30)
        answered = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert [excluded_on(proxy) for proxy in proxies.values()] == [True, True, True]
    restarting.wait_ready(timeout=30)
    print(f"\nreplica restarted mid-exclusion; all 3 applied it after {answered * 1000:.1f} ms")
    assert nodes[EXCLUDED].name not in nodes_written(restarting, 12)


def test_a_new_replica_learns_the_exclusions_before_it_turns_ready(
    nodes: dict[str, NodeProcess], dns_server: DNSServer, replicas: Replicas
) -> None:
    proxies = replicas()
    first, _, late = proxies.values()
    dns_server.set_records(PEERS, PROXY_IPS[:2])
    start_all({ip: proxies[ip] for ip in PROXY_IPS[:2]})
    response = httpx.post(f"{first.url}/admin/backends/{EXCLUDED}/exclude", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text

    dns_server.set_records(PEERS, PROXY_IPS)
    started = time.monotonic()
    late.start()
    late.wait_ready(timeout=30)
    ready_after = time.monotonic() - started
    # Ready means synced: the very first look already shows the exclusion.
    assert excluded_on(late) is True
    print(f"\nnew replica ready (exclusions synced) {ready_after * 1000:.1f} ms after start")
    assert nodes[EXCLUDED].name not in nodes_written(late, 12)
    assert "exclusions synced from a peer replica" in late.log_text()


def test_a_peer_that_never_answers_is_reported_with_207(
    nodes: dict[str, NodeProcess], dns_server: DNSServer, replicas: Replicas
) -> None:
    proxies = replicas(PROXY_IPS[:2], peer_timeout_secs="2")
    dns_server.set_records(PEERS, [*PROXY_IPS[:2], "127.0.0.14"])  # nothing listens on .14
    start_all(proxies)
    first, second = proxies.values()

    response = httpx.post(f"{first.url}/admin/backends/{EXCLUDED}/exclude", headers=AUTH, timeout=30)
    assert response.status_code == 207, response.text
    body = response.json()
    assert body["peers_applied"] == [PROXY_IPS[1]]
    assert [item["peer"] for item in body["peers_failed"]] == ["127.0.0.14"]
    assert excluded_on(first) is True and excluded_on(second) is True

    # A wrong token is refused locally and reaches no peer.
    refused = httpx.post(
        f"{first.url}/admin/backends/{EXCLUDED}/include", headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert refused.status_code == 401
    assert excluded_on(second) is True
