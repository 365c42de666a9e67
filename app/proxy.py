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
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from app.access_log import AccessLog
from app.backend import Backend
from app.forwarded import TrustedProxies, client_address
from app.headers import request_headers, response_headers
from app.logs import redact_query
from app.metrics import OUTCOMES, Metrics
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
WATCH_AFTER_SECS = 0.05  # most requests finish sooner: they never pay for a disconnect watcher


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
        client: httpx.AsyncClient,
        metrics: Metrics,
        retry_budget: RetryBudget,
        *,
        outlier: OutlierDetector | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._settings = settings
        self._access_log = access_log or AccessLog(settings.log_format)
        self._pool = pool
        self._client = client
        self._metrics = metrics
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
        self._timeouts = {
            "connect": settings.connect_timeout_ms / 1000,
            "read": settings.request_timeout_secs,
            "write": settings.request_timeout_secs,
            "pool": settings.request_timeout_secs,
        }
        self._pending = 0
        self._buffered = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)  # this process's totals, for the status page
        # Parsing a URL costs more than the rest of building a request; a
        # backend's origin is parsed once and the exact target bytes travel in
        # the request's ``target`` extension.
        self._origin = functools.lru_cache(maxsize=4096)(httpx.URL)

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
        task = asyncio.current_task()
        assert task is not None
        watch: asyncio.TimerHandle | None = None
        held_bytes = 0
        self._metrics.inflight.inc()
        try:
            body, held_bytes = await self._read_body(scope, receive, exchange)
            if body is None:
                return
            watch = asyncio.get_running_loop().call_later(
                WATCH_AFTER_SECS, _start_watcher, receive, task, exchange
            )
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
            if watch is not None:
                watch.cancel()
            if exchange.watcher is not None:
                exchange.watcher.cancel()
            self._release(held_bytes)
            self._metrics.inflight.dec()
            self._record(exchange)

    async def _refuse_private(self, scope: Scope, send: Send) -> None:
        """A path outside PUBLIC_PATHS: 404 from the proxy itself, no backend contacted."""
        exchange = _Exchange(scope, send, time.perf_counter())
        exchange.outcome = "not_public"
        await exchange.error(404, "not found: this path is not served by the proxy")
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
        """
        declared = _declared_length(scope["headers"])
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
        if self._buffered + size > self._settings.max_buffered_bytes:
            raise _Overloaded
        self._buffered += size
        self._metrics.buffered_bytes.inc(size)
        return size

    def _release(self, size: int) -> None:
        if size:
            self._buffered -= size
            self._metrics.buffered_bytes.dec(size)

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
        loop = asyncio.get_running_loop()
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
        request = self._build_request(scope, backend, body, exchange.had_length)
        backend.inflight += 1
        backend.requests += 1
        exchange.backend = backend
        try:
            started = time.perf_counter()
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                return self._failed(backend, retries, _transport_failure(exc), _describe(exc))
            self._metrics.upstream_duration.observe(time.perf_counter() - started)
            try:
                status = response.status_code
                # An AsyncClient's response streams asynchronously; httpx types it as either kind.
                chunks = aiter(response.stream)  # type: ignore[arg-type]
                kind: FailureKind | None = None
                try:
                    if status == 503:
                        prefix, drain = await _classify_503(response, chunks)
                        kind = classify_status(status, drain=drain)
                    elif status >= 500:
                        kind = classify_status(status, drain=False)
                        prefix = b"" if kind in RETRYABLE else await anext(chunks, b"")
                    else:
                        # The status line is not the client's until a first body byte (or
                        # the end of the body) has arrived: a backend that dies in between
                        # -- InfluxDB sends query headers before running the query -- is
                        # then an ordinary failure, retried elsewhere.
                        prefix = await anext(chunks, b"")
                except httpx.TransportError as exc:
                    return self._failed(backend, retries, _transport_failure(exc), _describe(exc))
                if kind is None:
                    self._outlier.success(backend)
                    await self._relay(response, chunks, prefix, exchange)
                    return None
                failure = self._failed(backend, retries, kind, f"backend answered {status}")
                if failure.decision.answer is not Answer.RELAY:
                    return failure
                await self._relay(response, chunks, prefix, exchange)
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

    def _build_request(self, scope: Scope, backend: Backend, body: bytes, had_length: bool) -> httpx.Request:
        target = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        client = scope.get("client")
        headers = request_headers(
            scope["headers"],
            host=backend.host_header.encode("ascii"),
            body_length=len(body),
            had_length=had_length,
            client_ip=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            trusted=self._trusted.trusts(client[0] if client else None),
        )
        extensions = {"timeout": self._timeouts, "target": target}
        return httpx.Request(
            scope["method"],
            self._origin(backend.base_url),
            headers=headers,
            content=body,
            extensions=extensions,
        )

    async def _relay(
        self, response: httpx.Response, chunks: AsyncIterator[bytes], prefix: bytes, exchange: _Exchange
    ) -> None:
        send = exchange.send
        exchange.status = response.status_code
        exchange.outcome = "ok"
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response_headers(response.headers.raw, response.status_code),
            }
        )
        exchange.started_response = True
        if prefix:
            await send({"type": "http.response.body", "body": prefix, "more_body": True})
        try:
            async for chunk in chunks:
                if chunk:
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

    def _client_address(self, scope: Scope) -> str | None:
        """The access log's ``client`` field: decided here and nowhere else (trusted forwarders rule)."""
        return client_address(scope, self._trusted)

    def _record(self, exchange: _Exchange) -> None:
        elapsed = time.perf_counter() - exchange.started
        outcome = exchange.outcome
        self.outcomes[outcome] += 1
        self._metrics.outcome[outcome].inc()
        self._metrics.request_duration.observe(elapsed)
        access_log = self._access_log
        if access_log.enabled:
            scope = exchange.scope
            access_log.record(
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": redact_query(scope.get("query_string", b"").decode("latin-1")),
                    "status": exchange.status,
                    "outcome": outcome,
                    "backend": exchange.backend_name,
                    "attempts": exchange.attempts,
                    "held_ms": round(exchange.held * 1000, 1),
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": self._client_address(scope),
                }
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
        "scope",
        "send",
        "started",
        "started_response",
        "status",
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


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _classify_503(response: httpx.Response, chunks: AsyncIterator[bytes]) -> tuple[bytes, bool]:
    """Read a 503's body (bounded) and decide whether it means 'try another node'."""
    if any(name.lower() in DRAIN_HEADERS for name, _ in response.headers.raw):
        return b"", True
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > PEEK_LIMIT:
            return bytes(body), False  # a large 503 body is a real error page; relay the rest too
    text = bytes(body)
    return text, (not text.strip() or any(marker in text for marker in DRAIN_MARKERS))


def _start_watcher(receive: Receive, task: asyncio.Task[Any], exchange: _Exchange) -> None:
    """The request is taking a while: from now on, notice if its client leaves."""
    exchange.watcher = asyncio.ensure_future(_watch_disconnect(receive, task, exchange))


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], exchange: _Exchange) -> None:
    """Cancel the request's task when its client goes away, freeing what it holds."""
    message = await receive()
    # uvicorn also reports a disconnect once the response is complete.
    if message["type"] == "http.disconnect" and not exchange.completing:
        exchange.client_gone = True
        task.cancel()
