"""A retry budget: retries may add at most a fixed share to recent traffic.

Per-request retry limits alone let a sick cluster receive three times its
normal load exactly when it can least take it.  As in Envoy and Finagle, the
proxy also caps retries at a share of the requests of a sliding window.  The
floor is a rate, as Finagle's ``minRetriesPerSec``: however quiet the proxy,
``min_per_sec`` times the window length retries are allowed per window, so
a node that dies with a hundred slow queries in flight on a quiet proxy
has every one of them retried, while a storm on a busy proxy stays near
``1 + percent/100`` attempts per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BUCKETS = 10


class RetryBudget:
    def __init__(
        self,
        *,
        percent: float,
        min_per_sec: float,
        window_secs: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = percent / 100.0
        self._min_retries = min_per_sec * window_secs
        self._width = window_secs / BUCKETS
        self._clock = clock
        self._requests = [0] * BUCKETS
        self._retries = [0] * BUCKETS
        self._total_requests = 0
        self._total_retries = 0
        self._tick = int(clock() / self._width)

    def _advance(self) -> int:
        tick = int(self._clock() / self._width)
        if tick != self._tick:
            for stale in range(self._tick + 1, min(tick, self._tick + BUCKETS) + 1):
                slot = stale % BUCKETS
                self._total_requests -= self._requests[slot]
                self._total_retries -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._tick = tick
        return tick % BUCKETS

    def record_request(self) -> None:
        slot = self._advance()
        self._requests[slot] += 1
        self._total_requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        slot = self._advance()
        allowed = max(self._min_retries, self._ratio * self._total_requests)
        if self._total_retries + 1 > allowed:
            return False
        self._retries[slot] += 1
        self._total_retries += 1
        return True

    @property
    def recent(self) -> tuple[int, int]:
        """Requests and retries in the current window."""
        self._advance()
        return self._total_requests, self._total_retries
