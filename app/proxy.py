"""The catch-all endpoint: forward a request to a healthy backend and relay the answer.

One request goes through: a bounded read of its body (kept for retries), a
pick from the Active backends (or a hold until one turns Active), a forward,
a classification of what came back, and either a retry elsewhere or a
streamed relay of the backend's response.  It is a raw ASGI callable rather
than a Starlette endpoint: it needs nothing Starlette's request object
offers, and every allocation on this path is paid by every request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from app.access_log import AccessLog
from app.backend import Backend
from app.disconnects import DisconnectWatch
from app.forwarded import TrustedProxies, client_address
from app.forwarder import Forwarder, Timeouts, UpstreamResponse
from app.headers import request_headers, response_headers
from app.metrics import Metrics
from app.outlier import OutlierDetector
from app.pool import BackendPool
from app.public_paths import PublicPaths
from app.retry_budget import RetryBudget
from app.retry_policy import (
    RETRYABLE,
    Answer,
    Decision,
    FailureKind,
    RequestRetries,
    RetryPolicy,
    Signal,
    Verdict,
    classify_status,
    signal_of,
)
from app.settings import Settings
from app.transport import InvalidResponse

log = logging.getLogger("hyperbytedb_proxy.proxy")

DRAIN_MARKERS = (b'"status":"warn"', b"Draining", b"Syncing", b"Joining", b"Leaving", b"draining")
DRAIN_HEADERS = (b"retry-after", b"x-hyperbytedb-redirect")
PEEK_LIMIT = 64 * 1024  # a 503 body larger than this is not a drain answer
RETRY_AFTER_SECS = b"1"
CLIENT_CLOSED = 499  # nginx's status for the access log when the client went away


class UpstreamAborted(Exception):
    """The backend failed after the response started; the client connection is cut."""


class _ClientGone(Exception):
    """The client disconnected before the request body was read."""


class _TooLarge(Exception):
    pass


class _Overloaded(Exception):
    pass


# Transport errors that mean "the backend answered, but not with valid HTTP"
# (an oversized head, a bad status line): answered 502 and never retried.
INVALID_RESPONSE_ERRORS: tuple[type[httpx.TransportError], ...] = (InvalidResponse,)


@dataclass(slots=True)
class _Failure:
    """Why a forward did not produce a response to relay, and what the policy made of it."""

    kind: FailureKind
    detail: str
    decision: Decision


class ProxyEndpoint:
    """ASGI app that forwards every request it receives."""

    def __init__(
        self,
        settings: Settings,
        pool: BackendPool,
        forwarder: Forwarder,
        metrics: Metrics,
        retry_budget: RetryBudget,
        *,
        outlier: OutlierDetector | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._settings = settings
        self._access_log = access_log or AccessLog(settings.log_format)
        self._pool = pool
        self._forwarder = forwarder
        self._metrics = metrics
        self._stats = metrics.stats
        self._budget = retry_budget
        self._policy = RetryPolicy(
            max_retries=settings.max_retries, retry_on_timeout=settings.retry_on_timeout, budget=retry_budget
        )
        self._outlier = outlier or OutlierDetector(
            pool, consecutive_failures=0, ejection_secs=settings.outlier_ejection_secs, max_ejected_percent=0
        )
        self._public = PublicPaths(settings.public_paths)
        self._max_body = settings.max_body_bytes
        self._trusted = TrustedProxies(settings.trusted_proxies)
        self._timeouts = Timeouts(settings.connect_timeout_ms / 1000, settings.request_timeout_secs)
        self._pending = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, known at the first request
        self._watch = DisconnectWatch()

    @property
    def outcomes(self) -> dict[str, int]:
        """This process's requests by outcome, for the status page."""
        return self._stats.outcomes

    @property
    def pending(self) -> int:
        """Requests currently held waiting for an Active backend."""
        return self._pending

    # -- ASGI entry point ------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not self._public.allows(scope["path"]):
            await self._refuse_private(scope, send)
            return
        exchange = _Exchange(scope, send, time.perf_counter())
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        exchange.receive = receive
        exchange.task = task
        held_bytes = 0
        self._metrics.request_started()
        try:
            body, held_bytes = await self._read_body(scope, receive, exchange)
            if body is None:
                return
            self._watch.add(exchange, loop)
            try:
                await self._forward(scope, body, exchange)
            except _Overloaded:
                exchange.outcome = "overloaded"
                await exchange.error(503, "too many requests are waiting for a backend; retry shortly")
        except asyncio.CancelledError:
            if not exchange.client_gone or task.uncancel() > 0:
                raise
            exchange.finish("client_closed", CLIENT_CLOSED)
        except _ClientGone:
            exchange.finish("client_closed", CLIENT_CLOSED)
        except UpstreamAborted:
            raise
        except Exception:
            log.exception("unexpected error while proxying", extra={"fields": {"path": scope["path"]}})
            exchange.outcome = "fatal"
            if exchange.started_response:
                raise
            await exchange.error(502, "internal proxy error")
        finally:
            self._watch.discard(exchange)
            self._release(held_bytes)
            self._record(exchange)

    async def _refuse_private(self, scope: Scope, send: Send) -> None:
        """A path outside PUBLIC_PATHS: 404 from the proxy itself, no backend contacted."""
        self._metrics.request_started()
        exchange = _Exchange(scope, send, time.perf_counter())
        exchange.outcome = "not_public"
        try:
            await exchange.error(404, "not found: this path is not served by the proxy")
        finally:
            self._record(exchange)

    # -- request body ----------------------------------------------------

    async def _read_body(
        self, scope: Scope, receive: Receive, exchange: _Exchange
    ) -> tuple[bytes | None, int]:
        """Read the whole body within the limits, or answer the client and return None.

        Bytes are reserved against MAX_BUFFERED_BYTES as they arrive, not on
        the declared length: a client that declares 25 MiB and sends nothing
        holds nothing (and the client body timeout ends it).  A body that
        does not match its Content-Length is never forwarded.

        A request framed without a body (no Content-Length, or 0, and not
        chunked: most queries) is not read at all: there is nothing to
        receive, and the disconnect watcher reads past its empty message.
        """
        declared, chunked = _body_framing(scope["headers"])
        if not declared and not chunked:
            exchange.had_length = declared is not None
            return b"", 0
        if declared is not None and declared > self._max_body:
            await self._reject_too_large(exchange, declared)
            return None, 0
        reserved = 0
        size = 0
        try:
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if chunk:
                    size += len(chunk)
                    if size > self._max_body:
                        raise _TooLarge
                    reserved += self._reserve(len(chunk))
                    chunks.append(chunk)
        except _TooLarge:
            self._release(reserved)
            await self._reject_too_large(exchange, None)
            return None, 0
        except _Overloaded:
            self._release(reserved)
            exchange.outcome = "overloaded"
            await exchange.error(503, "the proxy is buffering too many request bytes; retry shortly")
            return None, 0
        except BaseException:
            self._release(reserved)
            raise
        if declared is not None and size != declared:
            self._release(reserved)
            exchange.outcome = "rejected"
            mismatch = f"request body of {size} bytes does not match its Content-Length of {declared}"
            await exchange.error(400, mismatch, close=True)
            return None, 0
        exchange.had_length = declared is not None
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), reserved

    def _reserve(self, size: int) -> int:
        if self._stats.buffered_bytes + size > self._settings.max_buffered_bytes:
            raise _Overloaded
        self._stats.buffered_bytes += size
        return size

    def _release(self, size: int) -> None:
        self._stats.buffered_bytes -= size

    async def _reject_too_large(self, exchange: _Exchange, declared: int | None) -> None:
        what = f"request body of {declared} bytes" if declared is not None else "request body"
        exchange.outcome = "rejected"
        await exchange.error(413, f"{what} exceeds the limit of {self._max_body} bytes", close=True)

    # -- forwarding ------------------------------------------------------

    async def _forward(self, scope: Scope, body: bytes, exchange: _Exchange) -> None:
        """Carry out the retry policy's decisions until the client has an answer."""
        self._budget.record_request()
        policy = self._policy
        retries = policy.start()
        failure: _Failure | None = None
        hold_deadline: float | None = None
        loop = self._loop
        assert loop is not None
        while True:
            last = retries.last_failed
            selection = policy.select(
                retries,
                self._pool.pick,
                last_failed_routable=last is not None and last.routable and self._pool.contains(last),
            )
            backend = selection.backend
            if backend is None:
                if hold_deadline is None:
                    hold_deadline = loop.time() + self._settings.hold_timeout_secs
                held = await self._hold(
                    hold_deadline, loop, exchange, only_last_failed=selection.only_last_failed
                )
                if selection.only_last_failed:
                    retries.waited_for_other = True
                if not held:
                    await self._give_up(exchange, failure)
                    return
                continue
            policy.attempted(retries, backend)
            exchange.attempts += 1
            failure = await self._attempt(scope, backend, body, exchange, retries)
            if failure is None:
                return  # answered
            verdict = failure.decision.verdict
            if verdict is not Verdict.RETRY:
                await self._stop_retrying(exchange, failure)
                return
            self._metrics.retry_reason[failure.kind.value].inc()

    async def _hold(
        self, deadline: float, loop: asyncio.AbstractEventLoop, exchange: _Exchange, *, only_last_failed: bool
    ) -> bool:
        """Wait for a routable backend; False when the hold deadline passed."""
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        if self._pending >= self._settings.max_pending:
            raise _HoldRefused
        if only_last_failed:
            # The one routable backend just failed us: give the probes one
            # round to take it out (or another backend to turn Active)
            # before sending it the request again.
            remaining = min(remaining, self._settings.health_interval_secs)
        self._pending += 1
        self._metrics.held.inc()
        started = loop.time()
        try:
            woke = await self._pool.wait_routable(remaining)
        finally:
            self._pending -= 1
            self._metrics.held.dec()
            exchange.held += loop.time() - started
        return woke or only_last_failed or self._pool.routable_count > 0

    async def _attempt(
        self, scope: Scope, backend: Backend, body: bytes, exchange: _Exchange, retries: RequestRetries
    ) -> _Failure | None:
        """Forward once; answer the client and return None, or return the failure to act on.

        A failed answer the policy will not retry is relayed as the backend
        sent it, so the decision is taken here, before that answer is closed.
        """
        backend.inflight += 1
        backend.requests += 1
        exchange.backend = backend
        try:
            started = time.perf_counter()
            try:
                response = await self._forwarder.forward(
                    backend.origin,
                    scope["method"],
                    _target(scope),
                    self._request_headers(scope, backend, body, exchange.had_length),
                    body,
                    self._timeouts,
                )
            except httpx.TransportError as exc:
                return self._failed(backend, retries, _transport_failure(exc), _describe(exc))
            self._stats.upstream_duration.observe(time.perf_counter() - started)
            try:
                status = response.status
                kind: FailureKind | None = None
                try:
                    if status == 503:
                        prefix, drain = await _classify_503(response)
                        kind = classify_status(status, drain=drain)
                    elif status >= 500:
                        kind = classify_status(status, drain=False)
                        prefix = b"" if kind in RETRYABLE else await response.read_chunk()
                    else:
                        # The status line is not the client's until a first body byte (or
                        # the end of the body) has arrived: a backend that dies in between
                        # -- InfluxDB sends query headers before running the query -- is
                        # then an ordinary failure, retried elsewhere.
                        prefix = await response.read_chunk()
                except httpx.TransportError as exc:
                    return self._failed(backend, retries, _transport_failure(exc), _describe(exc))
                if kind is None:
                    self._outlier.success(backend)
                    await self._relay(response, prefix, exchange)
                    return None
                failure = self._failed(backend, retries, kind, f"backend answered {status}")
                if failure.decision.answer is not Answer.RELAY:
                    return failure
                await self._relay(response, prefix, exchange)
                if failure.decision.verdict is not Verdict.FINAL:
                    exchange.outcome = "exhausted"  # the backend's failure, relayed: no retry was allowed
                return None
            finally:
                await response.aclose()
        finally:
            backend.inflight -= 1

    def _failed(self, backend: Backend, retries: RequestRetries, kind: FailureKind, detail: str) -> _Failure:
        """Tell the pool and outlier detection what the failure says, and ask the policy what next."""
        backend.errors += 1
        signal = signal_of(kind)
        if signal is Signal.FAILURE:
            self._outlier.failure(backend, kind)
        elif signal is Signal.DRAINING:
            self._pool.mark_draining(backend, "answered a forwarded request with a drain 503")
        elif signal is Signal.UNREACHABLE:
            # Passive ejection: the probe loop brings it back when it answers again.
            self._pool.eject(backend, f"forward failed: {detail}")
        decision = self._policy.decide(retries, backend, kind)
        if decision.verdict is Verdict.DENIED:
            self._metrics.retries_denied.inc()
        return _Failure(kind, detail, decision)

    def _request_headers(
        self, scope: Scope, backend: Backend, body: bytes, had_length: bool
    ) -> list[tuple[bytes, bytes]]:
        client = scope.get("client")
        client_ip = client[0] if client else None
        return request_headers(
            scope["headers"],
            host=backend.host_header_bytes,
            body_length=len(body),
            had_length=had_length,
            client_ip=client_ip,
            scheme=scope.get("scheme", "http"),
            trusted=self._trusted.trusts(client_ip),
        )

    async def _relay(self, response: UpstreamResponse, prefix: bytes, exchange: _Exchange) -> None:
        """Send the client the response; ``prefix`` is its first body chunk, already read.

        A body that has arrived whole (the usual small answer) goes out with
        the head in two sends; a longer one streams chunk by chunk.
        """
        send = exchange.send
        status = response.status
        exchange.status = status
        exchange.outcome = "ok"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": response_headers(response.headers, status),
            }
        )
        exchange.started_response = True
        if response.body_complete:
            exchange.completing = True
            await send({"type": "http.response.body", "body": prefix, "more_body": False})
            return
        if prefix:
            await send({"type": "http.response.body", "body": prefix, "more_body": True})
        try:
            while chunk := await response.read_chunk():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.TransportError as exc:
            exchange.outcome = "fatal"
            log.warning(
                "backend failed mid-response; cutting the client connection",
                extra={"fields": {"backend": exchange.backend_name, "error": str(exc) or type(exc).__name__}},
            )
            raise UpstreamAborted(str(exc)) from exc
        exchange.completing = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stop_retrying(self, exchange: _Exchange, failure: _Failure) -> None:
        """Retries are over and no backend answer was relayed: say why."""
        answer = failure.decision.answer
        if answer is Answer.GATEWAY_TIMEOUT:
            exchange.outcome = "timeout"
            backend = exchange.backend_name
            await exchange.error(504, f"backend {backend} did not answer in time")
            return
        if failure.kind is FailureKind.INVALID_RESPONSE:
            exchange.outcome = "fatal"
            await exchange.error(502, f"backend sent an invalid response: {failure.detail}")
            return
        exchange.outcome = "exhausted"
        if answer is Answer.BAD_GATEWAY:
            # Nothing to relay (the backend gave no answer): report it as a gateway error.
            await exchange.error(502, f"backend failed and the retry budget is spent: {failure.detail}")
            return
        message = f"no backend could serve the request ({exchange.attempts} attempts)"
        await exchange.error(503, f"{message}; last error: {failure.detail}")

    async def _give_up(self, exchange: _Exchange, failure: _Failure | None) -> None:
        self._metrics.no_backend.inc()
        exchange.outcome = "no_backend"
        detail = f"; last error: {failure.detail}" if failure else ""
        await exchange.error(503, f"no healthy backend within {self._settings.hold_timeout_secs:g}s{detail}")

    # -- bookkeeping -----------------------------------------------------

    def _record(self, exchange: _Exchange) -> None:
        elapsed = time.perf_counter() - exchange.started
        outcome = exchange.outcome
        self._metrics.request_finished(outcome, elapsed)
        access_log = self._access_log
        if access_log.enabled:
            scope = exchange.scope
            access_log.request(
                scope["method"],
                scope["path"],
                scope["query_string"],
                exchange.status,
                outcome,
                exchange.backend_name,
                exchange.attempts,
                exchange.held,
                elapsed,
                client_address(scope, self._trusted),  # the trusted-forwarders rule decides it
            )


class _HoldRefused(_Overloaded):
    """Too many requests are already held."""


class _Exchange:
    """What one request has been through; feeds the answer, metrics and access log."""

    __slots__ = (
        "attempts",
        "backend",
        "client_gone",
        "completing",
        "had_length",
        "held",
        "outcome",
        "receive",
        "scope",
        "send",
        "started",
        "started_response",
        "status",
        "task",
        "watcher",
    )

    def __init__(self, scope: Scope, send: Send, started: float) -> None:
        self.scope = scope
        self.send = send
        self.started = started
        self.status = 0
        self.outcome = "fatal"
        self.backend: Backend | None = None
        self.attempts = 0
        self.held = 0.0
        self.had_length = False
        self.client_gone = False
        self.completing = False
        self.started_response = False
        self.watcher: asyncio.Task[None] | None = None
        self.receive: Receive
        self.task: asyncio.Task[Any]

    @property
    def backend_name(self) -> str | None:
        return self.backend.host_header if self.backend else None

    def finish(self, outcome: str, status: int) -> None:
        self.outcome = outcome
        if not self.started_response:
            self.status = status

    async def error(self, status: int, message: str, *, close: bool = False) -> None:
        """Answer with a JSON error body, the InfluxDB way."""
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 503:
            headers.append((b"retry-after", RETRY_AFTER_SECS))
        if close:
            headers.append((b"connection", b"close"))
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        self.started_response = True
        self.completing = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


def _transport_failure(exc: httpx.TransportError) -> FailureKind:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return FailureKind.CONNECT
    if isinstance(exc, httpx.ReadTimeout):
        return FailureKind.TIMEOUT
    if isinstance(exc, INVALID_RESPONSE_ERRORS):
        return FailureKind.INVALID_RESPONSE
    return FailureKind.TRANSPORT


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _body_framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The request's Content-Length (None: absent or unreadable) and whether its body is chunked."""
    declared: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked


async def _classify_503(response: UpstreamResponse) -> tuple[bytes, bool]:
    """Read a 503's body (bounded) and decide whether it means 'try another node'."""
    if any(name.lower() in DRAIN_HEADERS for name, _ in response.headers):
        return b"", True
    body = bytearray()
    while chunk := await response.read_chunk():
        body += chunk
        if len(body) > PEEK_LIMIT:
            return bytes(body), False  # a large 503 body is a real error page; relay the rest too
    text = bytes(body)
    return text, (not text.strip() or any(marker in text for marker in DRAIN_MARKERS))


def _target(scope: Scope) -> bytes:
    """The request target exactly as the client sent it (path and query string)."""
    target: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string")
    return target + b"?" + query if query else target
