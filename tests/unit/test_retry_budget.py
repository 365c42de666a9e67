"""The retry budget: a share of recent requests, with a floor for a quiet proxy."""

from __future__ import annotations

from app.retry_budget import RetryBudget


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
