"""The access log of a real proxy process: complete after a normal stop, harmless when its pipe blocks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from sim.dns import DNSServer
from sim.processes import NodeProcess, ProxyProcess
from tests.integration.conftest import SERVICE, ProxyFactory

pytestmark = pytest.mark.integration

REQUESTS = 300
BLOCKED_REQUESTS = 1500  # several times what a 64 KiB pipe holds at ~200 bytes a line
BLOCKED_DEADLINE_SECS = 120  # generous: the machine may be loaded; a stalled loop never finishes


def test_every_line_is_written_by_a_normal_stop(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(LOG_FORMAT="text")
    proxy.wait_ready()
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        for n in range(REQUESTS):
            assert (
                client.get("/query", params={"q": "SELECT 1", "n": str(n), "p": "hunter2"}).status_code == 200
            )
    assert proxy.stop() == 0
    log = proxy.log_text()
    lines = [
        line
        for line in log.splitlines()
        if " hyperbytedb_proxy.access request method=GET path=/query " in line
    ]
    assert sorted(int(line.split("&n=")[1].split("&")[0]) for line in lines) == list(range(REQUESTS))
    assert "hunter2" not in log


def test_a_blocked_log_pipe_does_not_stall_requests(
    nodes: dict[str, NodeProcess], dns_server: DNSServer, node_port: int, tmp_path: Path
) -> None:
    env = {
        "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
        "HYPERBYTEDB_PROXY_BACKEND_PORT": str(node_port),
        "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{dns_server.port}",
        "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.2",
    }
    # The proxy's output goes to a pipe whose reader never reads: once its
    # buffer is full, every write to it blocks.
    argv = ["sh", "-c", '"$0" -m app 2>&1 | sleep 600', sys.executable]
    proxy = ProxyProcess(env, argv=argv, log_dir=tmp_path)
    try:
        proxy.start()
        proxy.wait_ready(30)
        deadline = time.monotonic() + BLOCKED_DEADLINE_SECS
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            for n in range(BLOCKED_REQUESTS):
                assert client.get("/query", params={"q": "SELECT 1", "n": str(n)}).status_code == 200
                assert time.monotonic() < deadline, f"only {n} requests answered in {BLOCKED_DEADLINE_SECS}s"
            metrics = client.get("/metrics").text
        assert 'hyperbytedb_proxy_requests_total{outcome="ok"} 1500.0' in metrics
    finally:
        proxy.stop(timeout=2)  # its last log lines cannot be written: it is killed
