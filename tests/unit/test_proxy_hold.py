"""Holding requests while no backend is routable, and letting go of them."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.backend import Health
from tests.unit.harness import Harness

pytestmark = pytest.mark.anyio


def _all_down(h: Harness) -> None:
    for backend in h.state.pool.backends():
        h.state.pool.set_health(backend, Health.DOWN, "test")


async def test_held_request_is_served_the_moment_a_backend_turns_active() -> None:
    h = Harness(hold_timeout_secs=5)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        _all_down(h)
        started = time.monotonic()
        request = asyncio.create_task(h.client.post("/write?db=x", content=b"m v=1 1"))
        await asyncio.sleep(0.2)
        assert not request.done() and h.state.proxy.pending == 1
        assert h.metric("hyperbytedb_proxy_held_requests") == 1
        h.set_health("127.0.0.3", Health.ACTIVE)
        r = await asyncio.wait_for(request, 1)
        waited = time.monotonic() - started
    assert r.status_code == 204 and h.tried_hosts() == ["127.0.0.3"]
    assert 0.2 <= waited < 1.0  # woken by the event, long before the 5 s hold
    assert h.state.proxy.pending == 0


async def test_hold_expiry_answers_503_json_and_counts() -> None:
    h = Harness(hold_timeout_secs=0.3)
    async with h.running():
        _all_down(h)
        started = time.monotonic()
        r = await h.client.get("/query?q=x")
        waited = time.monotonic() - started
    assert r.status_code == 503 and r.headers["content-type"] == "application/json"
    assert "no healthy backend" in r.json()["error"] and r.headers["retry-after"]
    assert 0.3 <= waited < 1.0
    assert h.metric("hyperbytedb_proxy_no_backend_total") == 1
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "no_backend"}) == 1
    assert not h.backends.calls


@pytest.mark.parametrize("health", [Health.UNKNOWN, Health.DRAINING, Health.DOWN])
async def test_non_active_backends_are_never_routed(health: Health) -> None:
    h = Harness(hold_timeout_secs=0.1)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        for backend in h.state.pool.backends():
            h.state.pool.set_health(backend, health, "test")
        r = await h.client.get("/ping")
    assert r.status_code == 503 and not h.backends.calls


async def test_client_leaving_during_hold_frees_its_place() -> None:
    h = Harness(hold_timeout_secs=5)
    async with h.running():
        _all_down(h)
        request = asyncio.create_task(h.client.get("/query?q=x"))
        await asyncio.sleep(0.1)
        assert h.state.proxy.pending == 1
        request.cancel()  # the client goes away
        await asyncio.sleep(0.1)
        assert h.state.proxy.pending == 0
        assert h.metric("hyperbytedb_proxy_held_requests") == 0
        assert h.metric("hyperbytedb_proxy_inflight_requests") == 0


async def test_pending_cap_answers_503_at_once() -> None:
    h = Harness(hold_timeout_secs=5, max_pending=2)
    async with h.running():
        _all_down(h)
        held = [asyncio.create_task(h.client.get("/query?q=x")) for _ in range(2)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        r = await h.client.get("/query?q=x")
        assert time.monotonic() - started < 0.5
        assert r.status_code == 503 and r.headers["retry-after"] and "waiting" in r.json()["error"]
        assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "overloaded"}) == 1
        for task in held:
            task.cancel()
