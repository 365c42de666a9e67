"""The retry policy on its own: every branch of select, decide, classify and answer."""

from __future__ import annotations

from collections.abc import Callable, Collection

import pytest

from app.backend import Backend
from app.retry_policy import (
    Answer,
    Decision,
    FailureKind,
    RetryPolicy,
    Signal,
    Verdict,
    answer_for,
    classify_status,
    signal_of,
)


class FakeBudget:
    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.spent = 0

    def try_spend(self) -> bool:
        if self.spent >= self.allowed:
            return False
        self.spent += 1
        return True


A, B, C = (Backend(f"127.0.0.{n}", 8086) for n in (2, 3, 4))


def picker(*routable: Backend) -> Callable[[Collection[Backend]], Backend | None]:
    def pick(avoid: Collection[Backend]) -> Backend | None:
        return next((b for b in routable if b not in avoid), None)

    return pick


def policy(*, max_retries: int = 2, retry_on_timeout: bool = False, budget: int = 100) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, retry_on_timeout=retry_on_timeout, budget=FakeBudget(budget))


# -- classify_status -----------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 301, 400, 404, 422, 499])
def test_statuses_below_500_are_successes(status: int) -> None:
    assert classify_status(status, drain=False) is None
    assert classify_status(status, drain=True) is None


@pytest.mark.parametrize(
    ("status", "drain", "kind"),
    [
        (502, False, FailureKind.STATUS_502),
        (504, False, FailureKind.STATUS_504),
        (503, True, FailureKind.DRAIN_503),
        (503, False, FailureKind.ERROR_5XX),  # a "fail" 503: the node's own error
        (500, False, FailureKind.ERROR_5XX),
        (501, False, FailureKind.ERROR_5XX),
        (507, False, FailureKind.ERROR_5XX),
    ],
)
def test_5xx_statuses_map_to_failure_kinds(status: int, drain: bool, kind: FailureKind) -> None:
    assert classify_status(status, drain=drain) is kind


# -- signals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "signal"),
    [
        (None, Signal.SUCCESS),
        (FailureKind.CONNECT, Signal.UNREACHABLE),
        (FailureKind.DRAIN_503, Signal.DRAINING),
        (FailureKind.TRANSPORT, Signal.FAILURE),
        (FailureKind.TIMEOUT, Signal.FAILURE),
        (FailureKind.STATUS_502, Signal.FAILURE),
        (FailureKind.STATUS_504, Signal.FAILURE),
        (FailureKind.ERROR_5XX, Signal.FAILURE),
        (FailureKind.INVALID_RESPONSE, Signal.FAILURE),
    ],
)
def test_what_each_result_tells_about_the_backend(kind: FailureKind | None, signal: Signal) -> None:
    assert signal_of(kind) is signal


def test_every_failure_kind_has_a_signal() -> None:
    assert all(isinstance(signal_of(kind), Signal) for kind in FailureKind)


# -- decide ------------------------------------------------------------------


def test_connect_failure_is_retried_without_spending_a_retry_or_budget() -> None:
    p = policy(max_retries=0, budget=0)
    state = p.start()
    for _ in range(5):
        assert p.decide(state, A, FailureKind.CONNECT) == Decision(Verdict.RETRY)
    assert state.retries_left == 0 and state.last_failed is A


@pytest.mark.parametrize(
    "kind", [FailureKind.TRANSPORT, FailureKind.STATUS_502, FailureKind.STATUS_504, FailureKind.DRAIN_503]
)
def test_retryable_failures_spend_a_retry_and_the_budget(kind: FailureKind) -> None:
    budget = FakeBudget(10)
    p = RetryPolicy(max_retries=2, retry_on_timeout=False, budget=budget)
    state = p.start()
    assert p.decide(state, A, kind).verdict is Verdict.RETRY
    assert p.decide(state, B, kind).verdict is Verdict.RETRY
    assert (state.retries_left, budget.spent) == (0, 2)
    assert p.decide(state, C, kind).verdict is Verdict.EXHAUSTED
    assert budget.spent == 2  # exhaustion does not touch the budget


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        (FailureKind.TRANSPORT, Answer.UNAVAILABLE),
        (FailureKind.STATUS_502, Answer.UNAVAILABLE),
        (FailureKind.DRAIN_503, Answer.UNAVAILABLE),
    ],
)
def test_exhausted_retries_answer_503(kind: FailureKind, answer: Answer) -> None:
    p = policy(max_retries=0)
    assert p.decide(p.start(), A, kind) == Decision(Verdict.EXHAUSTED, answer)


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        (FailureKind.TRANSPORT, Answer.BAD_GATEWAY),  # no backend answer to relay
        (FailureKind.STATUS_502, Answer.RELAY),
        (FailureKind.STATUS_504, Answer.RELAY),
        (FailureKind.DRAIN_503, Answer.RELAY),
    ],
)
def test_a_spent_budget_denies_the_retry(kind: FailureKind, answer: Answer) -> None:
    p = policy(budget=0)
    state = p.start()
    assert p.decide(state, A, kind) == Decision(Verdict.DENIED, answer)
    assert state.retries_left == 2  # a denied retry is not spent


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        (FailureKind.ERROR_5XX, Answer.RELAY),  # a 500 or a "fail" 503 is relayed as is
        (FailureKind.INVALID_RESPONSE, Answer.BAD_GATEWAY),
        (FailureKind.TIMEOUT, Answer.GATEWAY_TIMEOUT),
    ],
)
def test_final_failures_are_never_retried(kind: FailureKind, answer: Answer) -> None:
    budget = FakeBudget(10)
    p = RetryPolicy(max_retries=2, retry_on_timeout=False, budget=budget)
    state = p.start()
    assert p.decide(state, A, kind) == Decision(Verdict.FINAL, answer)
    assert (state.retries_left, budget.spent) == (2, 0)


def test_timeouts_are_retried_when_configured_and_answer_504_when_retries_stop() -> None:
    p = policy(max_retries=1, retry_on_timeout=True, budget=1)
    state = p.start()
    assert p.decide(state, A, FailureKind.TIMEOUT).verdict is Verdict.RETRY
    assert p.decide(state, B, FailureKind.TIMEOUT) == Decision(Verdict.EXHAUSTED, Answer.GATEWAY_TIMEOUT)
    denied = policy(retry_on_timeout=True, budget=0)
    assert denied.decide(denied.start(), A, FailureKind.TIMEOUT) == Decision(
        Verdict.DENIED, Answer.GATEWAY_TIMEOUT
    )


def test_invalid_response_is_final_even_with_retries_left() -> None:
    p = policy(retry_on_timeout=True)
    assert p.decide(p.start(), A, FailureKind.INVALID_RESPONSE).verdict is Verdict.FINAL


@pytest.mark.parametrize("verdict", [Verdict.EXHAUSTED, Verdict.DENIED, Verdict.FINAL])
def test_every_stop_has_an_answer(verdict: Verdict) -> None:
    for kind in FailureKind:
        assert isinstance(answer_for(kind, verdict), Answer)


# -- select ------------------------------------------------------------------


def test_select_prefers_a_backend_not_tried_yet() -> None:
    p = policy()
    state = p.start()
    p.attempted(state, A)
    p.decide(state, A, FailureKind.STATUS_502)
    assert p.select(state, picker(A, B), last_failed_routable=True).backend is B


def test_select_falls_back_to_a_tried_backend_other_than_the_last_failed() -> None:
    p = policy()
    state = p.start()
    for backend in (A, B):
        p.attempted(state, backend)
        p.decide(state, backend, FailureKind.STATUS_502)
    # Both tried; B failed last: A again rather than B.
    assert p.select(state, picker(A, B), last_failed_routable=True).backend is A


def test_select_holds_when_only_the_last_failed_is_routable_then_takes_it_after_waiting() -> None:
    p = policy()
    state = p.start()
    p.attempted(state, A)
    p.decide(state, A, FailureKind.TRANSPORT)
    first = p.select(state, picker(A), last_failed_routable=True)
    assert first.backend is None and first.only_last_failed
    state.waited_for_other = True
    assert p.select(state, picker(A), last_failed_routable=True).backend is A
    # A new failure starts the wait over.
    p.decide(state, A, FailureKind.TRANSPORT)
    assert p.select(state, picker(A), last_failed_routable=True).backend is None


def test_select_holds_plainly_when_nothing_is_routable() -> None:
    p = policy()
    state = p.start()
    assert p.select(state, picker(), last_failed_routable=False) == p.select(
        state, picker(), last_failed_routable=True
    )
    p.attempted(state, A)
    p.decide(state, A, FailureKind.CONNECT)
    selection = p.select(state, picker(), last_failed_routable=False)
    assert selection.backend is None and not selection.only_last_failed


def test_first_selection_is_the_pickers_choice() -> None:
    p = policy()
    assert p.select(p.start(), picker(C, A), last_failed_routable=False).backend is C
