from __future__ import annotations

import asyncio

import pytest

from app.backend import Health
from app.pool import BackendPool
from app.retry_budget import RetryBudget


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


def test_retry_budget_share_floor_and_window() -> None:
    now = [0.0]
    budget = RetryBudget(percent=20, min_per_sec=0.2, window_secs=10, clock=lambda: now[0])
    assert budget.try_spend() and budget.try_spend()  # the floor lets a quiet proxy retry
    assert not budget.try_spend()
    for _ in range(50):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(20)) == 8  # 20 % of 50 = 10, minus the 2 spent
    now[0] = 11.0  # the window slid past everything
    assert budget.recent == (0, 0)
    assert budget.try_spend()


def test_retry_budget_floor_is_a_rate_times_the_window() -> None:
    now = [0.0]
    budget = RetryBudget(percent=20, min_per_sec=10, window_secs=10, clock=lambda: now[0])
    # A quiet proxy: 96 requests in flight when their node dies are all retried.
    for _ in range(96):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(96)) == 96
    assert sum(budget.try_spend() for _ in range(10)) == 4  # the floor is 100 per 10 s window
    now[0] = 10.5
    # A busy proxy: 20 % of the window's requests.
    for _ in range(1000):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(400)) == 200
