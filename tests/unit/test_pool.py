"""The backend pool: round-robin picks, exclusion, and waiting for a routable backend."""

from __future__ import annotations

import asyncio

import pytest

from app.backend import Health
from app.pool import BackendPool


def _pool(*ips: str) -> BackendPool:
    pool = BackendPool(8086)
    pool.reconcile(ips)
    for backend in pool.backends():
        pool.set_health(backend, Health.ACTIVE, "test")
    return pool


def test_round_robin_and_avoid() -> None:
    pool = _pool("127.0.0.2", "127.0.0.3", "127.0.0.4")
    picks = [pool.pick().address for _ in range(6)]  # type: ignore[union-attr]
    assert picks == ["127.0.0.2", "127.0.0.3", "127.0.0.4"] * 2
    a = pool.get("127.0.0.2")
    b = pool.get("127.0.0.3")
    assert pool.pick([a, b]).address == "127.0.0.4"  # type: ignore[union-attr,list-item]
    assert pool.pick(pool.backends()) is None


def test_excluded_backend_is_not_routable() -> None:
    pool = _pool("127.0.0.2", "127.0.0.3")
    pool.set_excluded(pool.get("127.0.0.2"), True)  # type: ignore[arg-type]
    assert {pool.pick().address for _ in range(4)} == {"127.0.0.3"}  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_wait_routable_wakes_early_and_times_out() -> None:
    pool = _pool("127.0.0.2")
    backend = pool.get("127.0.0.2")
    assert backend is not None
    pool.set_health(backend, Health.DOWN, "test")
    assert await pool.wait_routable(0.05) is False
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, pool.set_health, backend, Health.ACTIVE, "test")
    started = loop.time()
    assert await pool.wait_routable(5) is True
    assert loop.time() - started < 1
