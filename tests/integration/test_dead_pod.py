"""A pod IP that swallows connection attempts must cost one connect timeout, not the request timeout."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sim.dns import DNSServer
from sim.processes import NodeProcess
from tests.integration.conftest import SERVICE, ProxyFactory, backends_view

pytestmark = pytest.mark.integration

DEAD_IP = "127.0.0.6"


@contextlib.contextmanager
def blackhole(host: str, port: int) -> Iterator[None]:
    """A listener that never accepts, with its accept queue full: further SYNs are dropped."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the queue (Linux admits backlog + 1)
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((host, port))
            fillers.append(filler)
        time.sleep(0.1)
        yield
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_dead_pod_fails_fast_and_is_retried_elsewhere(
    tmp_path: Path, node_port: int, dns_server: DNSServer, start_proxy: ProxyFactory
) -> None:
    live = NodeProcess("127.0.0.2", node_port, log_dir=tmp_path).start()
    doomed = NodeProcess(DEAD_IP, node_port, log_dir=tmp_path).start()
    try:
        live.wait_ready()
        doomed.wait_ready()
        dns_server.set_records(SERVICE, ["127.0.0.2", DEAD_IP])
        # Probes are slow on purpose: only the forwarding path can notice the dead pod.
        proxy = start_proxy(health_interval_secs="60", connect_timeout_ms="300", request_timeout_secs="30")
        proxy.wait_ready()
        deadline = time.monotonic() + 5
        while set(backends_view(proxy).values()) != {"active"} and time.monotonic() < deadline:
            time.sleep(0.05)
        doomed.kill()
        doomed.wait_exit(5)
        with blackhole(DEAD_IP, node_port), httpx.Client(base_url=proxy.url, timeout=10) as client:
            took = []
            for i in range(6):
                started = time.monotonic()
                r = client.post("/write?db=d", content=f"m v={i} {i}")
                took.append(time.monotonic() - started)
                assert r.status_code == 204
            assert backends_view(proxy)[DEAD_IP] == "down"  # passive ejection
        assert max(took) < 1.5  # one connect timeout (0.3 s) at most, never the 30 s request timeout
        assert sum(t > 0.25 for t in took) == 1  # exactly one request paid one connect timeout
        assert live.point_count() == 6
    finally:
        doomed.stop()
        live.stop()
