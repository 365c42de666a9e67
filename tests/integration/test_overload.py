"""Thousands of agents writing into a full outage: bounded memory, fast refusals, clean recovery."""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest

from sim.processes import NodeProcess
from tests.integration.conftest import NODE_IPS, ProxyFactory
from tests.integration.memory import peak_rss

pytestmark = pytest.mark.integration

WRITERS = 2000
BODY = b"cpu,host=agent value=1 1700000000000000000\n" * 400  # about 17 KiB, a typical Telegraf batch
RSS_GROWTH_BOUND_MIB = 160


async def _write(host: str, port: int, started: list[float]) -> tuple[int, float]:
    head = (
        b"POST /write?db=agents HTTP/1.1\r\nHost: proxy\r\nContent-Type: text/plain\r\n"
        b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n"
    )
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + BODY)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split()[1]), time.monotonic() - t0
    finally:
        writer.close()


async def _storm(host: str, port: int) -> list[tuple[int, float]]:
    started: list[float] = []
    return await asyncio.gather(*(_write(host, port, started) for _ in range(WRITERS)))


def test_outage_with_2000_writers_is_bounded_and_recovers(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    for node in nodes.values():
        node.set_state("syncing")
    proxy = start_proxy(hold_timeout_secs="3", max_pending="1024", log_level="warning")
    deadline = time.monotonic() + 5
    while httpx.get(f"{proxy.url}/readyz").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    with peak_rss(proxy.pid) as memory:
        results = asyncio.run(_storm(proxy.host, proxy.port))

    statuses = collections.Counter(status for status, _ in results)
    fast_refusals = [took for status, took in results if took < 1.0]
    growth = memory.growth
    print(  # the figures for the record (pytest -s shows them)
        f"\noverload: {WRITERS} writers, statuses {dict(statuses)}, "
        f"{len(fast_refusals)} answered in < 1 s, idle RSS {memory.before:.1f} MiB, "
        f"peak {memory.peak:.1f} MiB (+{growth:.1f} MiB)"
    )
    assert statuses == {503: WRITERS}  # nothing was routable: every writer got a clear 503
    assert len(fast_refusals) >= WRITERS - 1024  # beyond MAX_PENDING: refused at once, not held
    assert growth < RSS_GROWTH_BOUND_MIB

    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'hyperbytedb_proxy_requests_total{outcome="overloaded"}' in metrics
    assert "hyperbytedb_proxy_held_requests 0.0" in metrics
    assert "hyperbytedb_proxy_buffered_request_bytes 0.0" in metrics

    nodes[NODE_IPS[0]].set_state("active")
    proxy.wait_ready()
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        for i in range(50):
            assert client.post("/write?db=agents", content=f"m v={i} {i}").status_code == 204
