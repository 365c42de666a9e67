"""Minimal reproductions of proxy bugs the fault suite found (real processes on loopback).

Each test names the chaos scenario that showed the bug and fails until the proxy is fixed.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sim.node import stream_chunk
from sim.processes import NodeProcess, ProxyProcess, free_port_on_all

pytestmark = pytest.mark.integration

IPS = ("127.0.0.2", "127.0.0.3")


@pytest.fixture
def two_nodes_and_proxy(tmp_path: Path) -> Iterator[tuple[dict[str, NodeProcess], ProxyProcess]]:
    port = free_port_on_all(list(IPS))
    nodes = {ip: NodeProcess(ip, port, log_dir=tmp_path) for ip in IPS}
    proxy = ProxyProcess(
        {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": ",".join(IPS),  # IP literals: no DNS needed
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(port),
            "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.5",
            "HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS": "500",
            "HYPERBYTEDB_PROXY_CONNECT_TIMEOUT_MS": "500",
            "HYPERBYTEDB_PROXY_PUBLIC_PATHS": "*",  # the test streams from /_sim/stream
        },
        log_dir=tmp_path,
    )
    try:
        for node in nodes.values():
            node.start().wait_ready(timeout=10)
        proxy.start().wait_ready(timeout=10)
        for _ in range(100):  # both Active, bounded
            backends = proxy.client.get(f"{proxy.url}/admin/backends").json()["backends"]
            if sum(b["health"] == "active" for b in backends) == len(IPS):
                break
            time.sleep(0.05)
        yield nodes, proxy
    finally:
        proxy.stop()
        for node in nodes.values():
            node.stop()


def test_backend_dying_after_response_headers_before_any_body_byte_is_retried(
    two_nodes_and_proxy: tuple[dict[str, NodeProcess], ProxyProcess],
) -> None:
    """Found by chaos scenario real-influxdb (and crash): a query in flight on a SIGKILLed node failed.

    InfluxDB 1.x flushes ``200`` response headers on ``/query`` *before* it runs
    the query (so clients know it was accepted), then writes the body.  A node
    that dies in between has sent headers and no body byte.  The proxy relays
    the status line at once, so it can no longer retry: the client sees a 200
    whose body is cut off (``ChunkedEncodingError`` in the InfluxDB Python
    client, ``RemoteProtocolError`` in httpx).  Nothing has reached the client
    yet at that point, so this is "a transport error after sending" like any
    other and must be retried on another backend: the proxy should hold the
    response start until the first body byte (or the end of the body) arrives.

    ``/_sim/stream?delay=`` reproduces the timing: headers, then a pause before
    the first chunk.
    """
    nodes, proxy = two_nodes_and_proxy
    size = 4096
    params = {"bytes": str(size), "chunk": str(size), "delay": "2"}

    def fetch() -> tuple[int, bytes]:
        with httpx.Client(timeout=15.0, trust_env=False) as http:
            response = http.get(f"{proxy.url}/_sim/stream", params=params)
            return response.status_code, response.content

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(fetch)
        victim = None
        for _ in range(100):  # which node got it? (bounded: 5 s)
            for node in nodes.values():
                if node.requests()["paths"].get("/_sim/stream"):
                    victim = node
            if victim is not None:
                break
            time.sleep(0.05)
        assert victim is not None, "the stream request reached no node"
        time.sleep(0.3)  # headers are out, the first body byte is 1.7 s away
        victim.kill()
        try:
            status, body = pending.result(timeout=20)
        except httpx.HTTPError as exc:
            pytest.fail(f"client saw {type(exc).__name__}: {exc} (proxy log: {proxy.log_path})")
    assert status == 200
    assert body == stream_chunk(0, size)
