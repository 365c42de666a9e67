"""What to do after each forward: retry, stop, and what it says about the backend.

Every decision the forwarding loop takes lives here, with no I/O, so each
branch can be tested on its own: which backend comes next (pingora's
``select_with(accept)``), whether a failure is retried, refused by the
retry budget or final (Finagle's ``RetryPolicy``), what the client is
answered when retries stop, and what the failure tells outlier detection.
The proxy only carries these decisions out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from app.backend import Backend


class FailureKind(enum.Enum):
    """Why one forward produced nothing to relay as a success.

    The values are the ``reason`` labels of the retry and ejection metrics.
    """

    CONNECT = "connect"  # no connection: the request never reached the backend
    TRANSPORT = "transport"  # the connection failed after the request was sent
    TIMEOUT = "timeout"  # no response headers within the request timeout
    STATUS_502 = "status_502"
    STATUS_504 = "status_504"
    DRAIN_503 = "drain_503"  # the node says it is draining, syncing or joining
    ERROR_5XX = "status_5xx"  # any other 5xx (500, a "fail" 503): the node's own answer
    INVALID_RESPONSE = "invalid_response"  # the backend answered something that is not HTTP


class Verdict(enum.Enum):
    """What happens to the request after a failure."""

    RETRY = "retry"
    EXHAUSTED = "exhausted"  # MAX_RETRIES spent
    DENIED = "denied"  # the retry budget is spent
    FINAL = "final"  # this kind of failure is never retried


class Answer(enum.Enum):
    """What the client gets when retries stop."""

    RELAY = "relay"  # the backend's own response, as it is
    BAD_GATEWAY = "bad_gateway"  # 502 JSON: the backend gave nothing relayable
    GATEWAY_TIMEOUT = "gateway_timeout"  # 504 JSON
    UNAVAILABLE = "unavailable"  # 503 JSON with Retry-After: no backend could serve it


class Signal(enum.Enum):
    """What a forward's result tells about the backend's health."""

    SUCCESS = "success"  # resets its consecutive failures
    FAILURE = "failure"  # counts toward ejection
    DRAINING = "draining"  # believed at once: Draining until the next probe
    UNREACHABLE = "unreachable"  # Down at once: the probes bring it back


RETRYABLE = frozenset(
    {
        FailureKind.CONNECT,
        FailureKind.TRANSPORT,
        FailureKind.STATUS_502,
        FailureKind.STATUS_504,
        FailureKind.DRAIN_503,
    }
)
SIGNALS = {
    FailureKind.CONNECT: Signal.UNREACHABLE,
    FailureKind.TRANSPORT: Signal.FAILURE,
    FailureKind.TIMEOUT: Signal.FAILURE,
    FailureKind.STATUS_502: Signal.FAILURE,
    FailureKind.STATUS_504: Signal.FAILURE,
    FailureKind.DRAIN_503: Signal.DRAINING,
    FailureKind.ERROR_5XX: Signal.FAILURE,
    FailureKind.INVALID_RESPONSE: Signal.FAILURE,
}
# Failures that come with a response the client can be given as it is.
ANSWERED = frozenset(
    {FailureKind.STATUS_502, FailureKind.STATUS_504, FailureKind.DRAIN_503, FailureKind.ERROR_5XX}
)


class Budget(Protocol):
    def try_spend(self) -> bool: ...


Picker = Callable[[Collection[Backend]], "Backend | None"]


def classify_status(status: int, *, drain: bool) -> FailureKind | None:
    """The failure a status stands for, or None for an answer that is a success.

    ``drain`` says whether a 503 looked like a drain answer (empty body,
    ``Retry-After``, ``X-Hyperbytedb-Redirect``, a lifecycle word).
    """
    if status < 500:
        return None
    if status == 502:
        return FailureKind.STATUS_502
    if status == 504:
        return FailureKind.STATUS_504
    if status == 503 and drain:
        return FailureKind.DRAIN_503
    return FailureKind.ERROR_5XX


def signal_of(kind: FailureKind | None) -> Signal:
    """What a forward's result (None: a success) tells outlier detection and the pool."""
    return Signal.SUCCESS if kind is None else SIGNALS[kind]


def answer_for(kind: FailureKind, verdict: Verdict) -> Answer:
    """The client's answer once ``verdict`` stops the retries after ``kind``."""
    if kind is FailureKind.TIMEOUT:
        return Answer.GATEWAY_TIMEOUT
    if kind is FailureKind.INVALID_RESPONSE:
        return Answer.BAD_GATEWAY
    if verdict is Verdict.EXHAUSTED:
        return Answer.UNAVAILABLE
    return Answer.RELAY if kind in ANSWERED else Answer.BAD_GATEWAY


# Decisions and selections are made for every request: tuples, which cost a
# fraction of a frozen dataclass to build.


class Decision(NamedTuple):
    verdict: Verdict
    answer: Answer | None = None  # None when retrying


class Selection(NamedTuple):
    """The next backend, or why there is none (the caller then holds)."""

    backend: Backend | None
    only_last_failed: bool = False  # the one routable backend is the one that just failed


@dataclass(slots=True)
class RequestRetries:
    """One request's retry state."""

    retries_left: int
    tried: list[Backend] = field(default_factory=list)
    last_failed: Backend | None = None
    waited_for_other: bool = False  # held once for another backend after the last one failed


class RetryPolicy:
    """Retry decisions for every request of one proxy."""

    def __init__(self, *, max_retries: int, retry_on_timeout: bool, budget: Budget) -> None:
        self._max_retries = max_retries
        self._retry_on_timeout = retry_on_timeout
        self._budget = budget

    def start(self) -> RequestRetries:
        return RequestRetries(self._max_retries)

    def select(self, state: RequestRetries, pick: Picker, *, last_failed_routable: bool) -> Selection:
        """Prefer a backend not tried yet; else any but the one that just failed.

        The one that just failed is only chosen again after the request has
        waited once for another (``waited_for_other``), so a single flapping
        backend gets a probe round to be taken out first.
        """
        backend = pick(state.tried)
        if backend is None and state.last_failed is not None:
            backend = pick((state.last_failed,))
        if backend is not None:
            return Selection(backend)
        only_last_failed = state.last_failed is not None and last_failed_routable
        if only_last_failed and state.waited_for_other:
            return Selection(state.last_failed)
        return Selection(None, only_last_failed=only_last_failed)

    def attempted(self, state: RequestRetries, backend: Backend) -> None:
        state.tried.append(backend)

    def decide(self, state: RequestRetries, backend: Backend, kind: FailureKind) -> Decision:
        """Retry or stop after ``backend`` failed with ``kind``; spends a retry when retrying."""
        state.last_failed = backend
        state.waited_for_other = False
        if kind is FailureKind.CONNECT:
            return Decision(Verdict.RETRY)  # the request never reached a backend: costs no retry
        if kind not in RETRYABLE and not (kind is FailureKind.TIMEOUT and self._retry_on_timeout):
            return Decision(Verdict.FINAL, answer_for(kind, Verdict.FINAL))
        if state.retries_left <= 0:
            return Decision(Verdict.EXHAUSTED, answer_for(kind, Verdict.EXHAUSTED))
        if not self._budget.try_spend():
            return Decision(Verdict.DENIED, answer_for(kind, Verdict.DENIED))
        state.retries_left -= 1
        return Decision(Verdict.RETRY)
