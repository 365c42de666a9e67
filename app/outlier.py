"""Outlier detection: take a backend out of routing when real traffic keeps failing on it.

Probes see only ``/health``; a "gray" node can pass them while every real
request fails (a broken query engine, a full disk, a proxy in front of it
that resets).  As in Envoy, consecutive failures of forwarded requests eject
the backend for a while.  Ejection ends by time only -- a gray node passes
its probe, so a good probe proves nothing -- and the n-th ejection in a row
lasts n doublings longer, up to ten times the base.  A cap on how many
backends may be out at once keeps a cluster-wide failure from ejecting
everyone and leaving nothing to route to when it recovers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from app.backend import Backend, Ejection
from app.pool import BackendPool
from app.retry_policy import FailureKind

log = logging.getLogger("hyperbytedb_proxy.outlier")

MAX_MULTIPLIER = 10

# How a failure kind reads in an ejection reason: "outlier: 5 consecutive 502".
FAILURE_WORDS = {
    FailureKind.TRANSPORT: "transport errors",
    FailureKind.TIMEOUT: "timeouts",
    FailureKind.STATUS_502: "502",
    FailureKind.STATUS_504: "504",
    FailureKind.ERROR_5XX: "5xx",
    FailureKind.INVALID_RESPONSE: "invalid responses",
    FailureKind.CONNECT: "connect failures",
    FailureKind.DRAIN_503: "drain 503",
}


class Timer(Protocol):
    def cancel(self) -> None: ...


Scheduler = Callable[[float, Callable[[], None]], Timer]
EjectionListener = Callable[[Backend, FailureKind], None]


def loop_scheduler(delay: float, callback: Callable[[], None]) -> Timer:
    """Run ``callback`` after ``delay`` seconds on the running event loop."""
    return asyncio.get_running_loop().call_later(delay, callback)


class OutlierDetector:
    """Counts each backend's consecutive forward failures and ejects the outliers."""

    def __init__(
        self,
        pool: BackendPool,
        *,
        consecutive_failures: int,
        ejection_secs: float,
        max_ejected_percent: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        schedule: Scheduler = loop_scheduler,
        on_eject: EjectionListener | None = None,
    ) -> None:
        self._pool = pool
        self._threshold = consecutive_failures
        self._base = ejection_secs
        self._max_percent = max_ejected_percent
        self._clock = clock
        self._wall = wall_clock
        self._schedule = schedule
        self._on_eject = on_eject
        self._timers: dict[Backend, Timer] = {}
        self._returned_at: dict[Backend, float] = {}
        self._streak_kind: dict[Backend, FailureKind | None] = {}

    @property
    def enabled(self) -> bool:
        return self._threshold > 0

    def ejected(self) -> list[Backend]:
        return [b for b in self._pool.backends() if b.ejection is not None]

    # -- signals from the forwarding path --------------------------------

    def success(self, backend: Backend) -> None:
        """A forward got an answer that is not a failure: its streak ends."""
        if backend.forward_failures:
            backend.forward_failures = 0

    def failure(self, backend: Backend, kind: FailureKind) -> None:
        """A forward failed on ``backend``; eject it once the streak is long enough."""
        backend.forward_failures += 1
        backend.last_failure_kind = kind.value
        if backend.forward_failures == 1:
            self._streak_kind[backend] = kind
        elif self._streak_kind.get(backend) is not kind:
            self._streak_kind[backend] = None  # a mixed streak
        if (
            self._threshold
            and backend.forward_failures >= self._threshold
            and backend.ejection is None
            and self._pool.contains(backend)
            and self._room_for_one_more()
        ):
            self._eject(backend, kind)

    # -- ejection ------------------------------------------------------------

    def ejection_secs(self, ejections: int) -> float:
        """Length of the ``ejections``-th ejection in a row: doubled each time, at most 10x."""
        doubled: float = self._base * 2 ** (ejections - 1)
        return min(doubled, self._base * MAX_MULTIPLIER)

    def _room_for_one_more(self) -> bool:
        """At most the configured share ejected, one always allowed, never all of them."""
        known = len(self._pool)
        cap = max(1, known * self._max_percent // 100)
        cap = min(cap, known - 1)
        return sum(1 for b in self._pool.backends() if b.ejection is not None) < cap

    def _eject(self, backend: Backend, kind: FailureKind) -> None:
        now = self._clock()
        returned = self._returned_at.get(backend)
        if returned is not None and now - returned > self._base * MAX_MULTIPLIER:
            backend.ejections = 0  # it behaved for a long while: start from the base again
        backend.ejections += 1
        duration = self.ejection_secs(backend.ejections)
        streak = self._streak_kind.get(backend)
        what = FAILURE_WORDS[streak] if streak is not None else f"failures, last {FAILURE_WORDS[kind]}"
        reason = f"outlier: {backend.forward_failures} consecutive {what}"
        wall = self._wall()
        self._pool.set_ejection(backend, Ejection(reason, wall, wall + duration))
        self._timers[backend] = self._schedule(duration, lambda: self._end(backend))
        log.warning(
            "backend ejected",
            extra={
                "fields": {
                    "backend": backend.host_header,
                    "reason": reason,
                    "ejection_secs": duration,
                    "ejections": backend.ejections,
                }
            },
        )
        if self._on_eject is not None:
            self._on_eject(backend, kind)

    def _end(self, backend: Backend) -> None:
        """The ejection's time is up: routed again if its probe passes."""
        self._timers.pop(backend, None)
        if backend.ejection is None:
            return
        backend.forward_failures = 0
        self._returned_at[backend] = self._clock()
        self._pool.set_ejection(backend, None)
        log.info(
            "backend returned from ejection",
            extra={"fields": {"backend": backend.host_header, "health": backend.health.value}},
        )

    def forget(self, backend: Backend) -> None:
        """The backend left the pool: drop its timer and history."""
        timer = self._timers.pop(backend, None)
        if timer is not None:
            timer.cancel()
        self._returned_at.pop(backend, None)
        self._streak_kind.pop(backend, None)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
