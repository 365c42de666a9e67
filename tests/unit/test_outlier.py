"""Outlier detection with a fake clock and a fake timer, and least-request selection."""

from __future__ import annotations

import random
from collections.abc import Callable

from app.backend import Backend, Health
from app.outlier import OutlierDetector
from app.pool import BackendPool
from app.retry_policy import FailureKind


class FakeTimers:
    """A clock and a scheduler: callbacks run when the test advances time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pending: list[tuple[float, Callable[[], None], FakeTimer]] = []

    def clock(self) -> float:
        return self.now

    def schedule(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        self.pending.append((self.now + delay, callback, timer))
        return timer

    def advance(self, secs: float) -> None:
        """Run every callback due within ``secs``, each at its own time."""
        end = self.now + secs
        while True:
            due = [p for p in self.pending if p[0] <= end]
            if not due:
                break
            first = min(due, key=lambda p: p[0])
            self.pending.remove(first)
            self.now = first[0]
            if not first[2].cancelled:
                first[1]()
        self.now = end


class FakeTimer:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def setup(
    count: int = 3, *, failures: int = 5, secs: float = 30, percent: int = 50
) -> tuple[BackendPool, OutlierDetector, FakeTimers, list[Backend], list[tuple[Backend, FailureKind]]]:
    timers = FakeTimers()
    pool = BackendPool(8086)
    pool.reconcile(f"127.0.0.{n}" for n in range(2, 2 + count))
    backends = pool.backends()
    for b in backends:
        pool.set_health(b, Health.ACTIVE, "test")
    ejected: list[tuple[Backend, FailureKind]] = []
    detector = OutlierDetector(
        pool,
        consecutive_failures=failures,
        ejection_secs=secs,
        max_ejected_percent=percent,
        clock=timers.clock,
        wall_clock=timers.clock,
        schedule=timers.schedule,
        on_eject=lambda b, k: ejected.append((b, k)),
    )
    return pool, detector, timers, backends, ejected


def fail(detector: OutlierDetector, backend: Backend, times: int, kind: FailureKind) -> None:
    for _ in range(times):
        detector.failure(backend, kind)


def test_consecutive_failures_eject_with_a_reason_and_an_end() -> None:
    pool, detector, timers, (a, _, _), ejected = setup()
    fail(detector, a, 4, FailureKind.STATUS_502)
    assert a.ejection is None and pool.routable_count == 3
    detector.failure(a, FailureKind.STATUS_502)
    assert a.ejection is not None
    assert a.ejection.reason == "outlier: 5 consecutive 502"
    assert a.ejection.until == timers.now + 30
    assert not a.routable and pool.routable_count == 2
    assert all(pool.pick() is not a for _ in range(6))
    assert ejected == [(a, FailureKind.STATUS_502)]


def test_a_success_resets_the_streak() -> None:
    _, detector, _, (a, _, _), _ = setup()
    fail(detector, a, 4, FailureKind.TRANSPORT)
    detector.success(a)
    fail(detector, a, 4, FailureKind.TRANSPORT)
    assert a.ejection is None and a.forward_failures == 4


def test_mixed_streak_reason_names_the_last_failure() -> None:
    _, detector, _, (a, _, _), ejected = setup(failures=2)
    detector.failure(a, FailureKind.TRANSPORT)
    detector.failure(a, FailureKind.TIMEOUT)
    assert a.ejection is not None
    assert a.ejection.reason == "outlier: 2 consecutive failures, last timeouts"
    assert ejected == [(a, FailureKind.TIMEOUT)]


def test_ejection_ends_by_time_only_and_is_routed_again_if_active() -> None:
    pool, detector, timers, (a, _, _), _ = setup()
    fail(detector, a, 5, FailureKind.STATUS_502)
    pool.set_health(a, Health.ACTIVE, "probe answered 200")  # a gray node passes its probe
    pool.set_health(a, Health.DOWN, "blip")
    pool.set_health(a, Health.ACTIVE, "probe answered 200")
    assert a.ejection is not None and not a.routable
    timers.advance(29.9)
    assert a.ejection is not None
    timers.advance(0.2)
    assert a.ejection is None and a.routable and a.forward_failures == 0
    assert pool.routable_count == 3


def test_a_returning_backend_whose_probe_fails_stays_out() -> None:
    pool, detector, timers, (a, _, _), _ = setup()
    fail(detector, a, 5, FailureKind.TRANSPORT)
    pool.set_health(a, Health.DOWN, "probe failed")
    timers.advance(31)
    assert a.ejection is None and not a.routable
    pool.set_health(a, Health.ACTIVE, "probe answered 200")
    assert a.routable


def test_repeated_ejections_double_up_to_ten_times() -> None:
    _, detector, timers, (a, _, _), _ = setup()
    lengths = []
    for _ in range(6):
        fail(detector, a, 5, FailureKind.STATUS_502)
        assert a.ejection is not None
        lengths.append(a.ejection.until - a.ejection.since)
        timers.advance(lengths[-1] + 0.1)
        assert a.ejection is None
    assert lengths == [30, 60, 120, 240, 300, 300]


def test_a_long_quiet_spell_starts_the_ejection_length_over() -> None:
    _, detector, timers, (a, _, _), _ = setup()
    fail(detector, a, 5, FailureKind.STATUS_502)
    timers.advance(30.1)
    fail(detector, a, 5, FailureKind.STATUS_502)
    assert a.ejection is not None and a.ejection.until - a.ejection.since == 60
    timers.advance(60.1 + 301)
    fail(detector, a, 5, FailureKind.STATUS_502)
    assert a.ejection is not None and a.ejection.until - a.ejection.since == 30


def test_at_most_the_configured_share_is_ejected_and_never_all() -> None:
    pool, detector, _, (a, b, c), ejected = setup(percent=50)
    for backend in (a, b, c):
        fail(detector, backend, 10, FailureKind.STATUS_502)
    assert [x for x, _ in ejected] == [a]  # 50 % of 3 rounds down to 1
    assert pool.routable_count == 2


def test_one_may_always_be_ejected_but_never_the_only_backend() -> None:
    _, detector, _, (a, b, _), _ = setup(percent=0)
    fail(detector, a, 5, FailureKind.STATUS_502)
    assert a.ejection is not None
    fail(detector, b, 5, FailureKind.STATUS_502)
    assert b.ejection is None
    lone_pool, lone_detector, _, (only,), _ = setup(count=1, percent=100)
    fail(lone_detector, only, 50, FailureKind.STATUS_502)
    assert only.ejection is None and lone_pool.routable_count == 1


def test_all_may_be_ejected_but_one_at_100_percent() -> None:
    pool, detector, _, backends, _ = setup(count=4, percent=100)
    for backend in backends:
        fail(detector, backend, 5, FailureKind.TRANSPORT)
    assert sum(b.ejection is not None for b in backends) == 3 and pool.routable_count == 1


def test_zero_threshold_turns_ejection_off() -> None:
    _, detector, _, (a, _, _), ejected = setup(failures=0)
    fail(detector, a, 100, FailureKind.STATUS_502)
    assert a.ejection is None and not ejected and not detector.enabled


def test_ending_an_ejection_wakes_held_requests() -> None:
    pool, detector, timers, backends, _ = setup(count=2, percent=100)
    a, b = backends
    fail(detector, a, 5, FailureKind.STATUS_502)
    pool.set_health(b, Health.DOWN, "probe failed")
    assert pool.routable_count == 0
    event = pool._became_routable  # the event held requests wait on
    timers.advance(31)
    assert event.is_set() and pool.routable_count == 1


def test_a_removed_backend_is_forgotten() -> None:
    pool, detector, timers, (a, _, _), _ = setup()
    fail(detector, a, 5, FailureKind.STATUS_502)
    pool.reconcile(["127.0.0.3", "127.0.0.4"])
    detector.forget(a)
    assert all(timer.cancelled for _, _, timer in timers.pending)
    fail(detector, a, 5, FailureKind.STATUS_502)  # failures of requests still in flight: no effect
    assert detector.ejected() == []


def test_failures_while_ejected_do_not_extend_it() -> None:
    _, detector, timers, (a, _, _), ejected = setup()
    fail(detector, a, 12, FailureKind.STATUS_502)
    assert len(ejected) == 1 and len(timers.pending) == 1


# -- least request -------------------------------------------------------------


def least_request_pool(count: int = 3, seed: int = 7) -> tuple[BackendPool, list[Backend]]:
    pool = BackendPool(8086, lb_policy="least_request", rng=random.Random(seed))
    pool.reconcile(f"127.0.0.{n}" for n in range(2, 2 + count))
    backends = pool.backends()
    for b in backends:
        pool.set_health(b, Health.ACTIVE, "test")
    return pool, backends


def test_least_request_picks_the_less_loaded_of_two() -> None:
    pool, (a, b) = least_request_pool(count=2)
    a.inflight = 5
    assert all(pool.pick() is b for _ in range(20))
    b.inflight = 9
    assert all(pool.pick() is a for _ in range(20))


def test_least_request_starves_the_busiest_backend() -> None:
    pool, (slow, b, c) = least_request_pool()
    slow.inflight = 50
    picks = [pool.pick() for _ in range(300)]
    assert slow not in picks
    assert {b, c} == set(picks)


def test_least_request_spreads_evenly_when_idle() -> None:
    pool, backends = least_request_pool()
    picks = [pool.pick() for _ in range(3000)]
    assert all(800 < picks.count(b) < 1200 for b in backends)


def test_least_request_honours_avoid_and_empty_pools() -> None:
    pool, (a, b, c) = least_request_pool()
    assert all(pool.pick((a, b)) is c for _ in range(10))
    assert pool.pick((a, b, c)) is None
    empty = BackendPool(8086, lb_policy="least_request")
    assert empty.pick() is None


def test_least_request_skips_ejected_backends() -> None:
    pool, (a, _, _) = least_request_pool()
    detector = OutlierDetector(
        pool,
        consecutive_failures=1,
        ejection_secs=30,
        max_ejected_percent=50,
        schedule=FakeTimers().schedule,
    )
    detector.failure(a, FailureKind.STATUS_502)
    assert a not in {pool.pick() for _ in range(100)}
