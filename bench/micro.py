"""``python -m bench.micro``: the cost of each piece of the per-request path, in isolation.

No sockets: every piece runs in a loop in this process (on uvloop when it
is installed), so the numbers are CPU microseconds per call without I/O.
They complement ``python -m bench.profile`` (sampled, under real load) and
size the suggestions in docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from app.access_log import AccessLog
from app.backend import Health
from app.headers import request_headers, response_headers
from app.logs import TextFormatter, redact_query
from app.main import create_app
from app.metrics import Metrics
from app.settings import load_settings

BACKEND = "http://127.0.0.2:8086"
TARGET = b"/query?db=bench&q=SELECT+1"
CLIENT_HEADERS = [(b"host", b"127.0.0.1:8086"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
NGINX_HEADERS = [
    (b"Server", b"nginx"),
    (b"Date", b"Fri, 27 Nov 2026 11:32:35 GMT"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"102"),
    (b"Connection", b"keep-alive"),
]
BODY = (
    b'{"results":[{"statement_id":0,"series":[{"name":"cpu","columns":["time","value"],"values":[[0,1]]}]}]}'
)
TIMEOUTS = {"connect": 1.0, "read": 60.0, "write": 60.0, "pool": 60.0}
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/query",
    "raw_path": b"/query",
    "query_string": b"db=bench&q=SELECT+1",
    "root_path": "",
    "headers": CLIENT_HEADERS,
    "client": ("127.0.0.1", 5000),
    "server": ("127.0.0.1", 8086),
}


def timed(fn: Callable[[], Any], n: int) -> float:
    """Microseconds per call of ``fn``, best of three rounds of ``n``."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


async def atimed(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


class _CannedResponse:
    """nginx's small answer, whole: what a pooled connection hands over after one read."""

    __slots__ = ("_body", "headers", "status")

    def __init__(self) -> None:
        self.status = 200
        self.headers = NGINX_HEADERS
        self._body = BODY

    @property
    def body_complete(self) -> bool:
        return not self._body

    async def read_chunk(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def aclose(self) -> None:
        return None


class _InstantForwarder:
    """A Forwarder that answers at once: what is left of a request is the proxy's own work."""

    async def forward(self, *args: Any) -> _CannedResponse:
        return _CannedResponse()

    def forget(self, host: str, port: int) -> None:
        return None

    async def aclose(self) -> None:
        return None


class _OneBackend:
    async def resolve(self, name: str) -> list[str]:
        return ["127.0.0.2"]


async def proxied_request(n: int, *, profile: bool = False) -> float:
    """One whole proxied request through ProxyEndpoint, access log on (to memory), µs per request."""
    settings = load_settings({"HYPERBYTEDB_PROXY_BACKEND_SERVICE": "db.bench"})
    logger = logging.getLogger("bench.micro.proxied")
    logger.setLevel(logging.INFO)
    access_log = AccessLog("text", stream=io.StringIO(), logger=logger)
    app = create_app(settings, forwarder=_InstantForwarder(), resolver=_OneBackend(), access_log=access_log)
    state = app.state.proxy
    state.pool.reconcile(["127.0.0.2"])
    (backend,) = state.pool.backends()
    state.pool.set_health(backend, Health.ACTIVE, "bench")
    access_log.start()
    scope = dict(SCOPE)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def one() -> None:
        await app(dict(scope), receive, send)

    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        return await atimed(one, n)
    finally:
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        access_log.close()


class _FixedTransport(httpx.AsyncBaseTransport):
    """Answers at once with nginx's headers: what is left is the client's own work."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=NGINX_HEADERS, stream=httpx.ByteStream(BODY))


def _headers() -> list[tuple[bytes, bytes]]:
    return request_headers(
        CLIENT_HEADERS,
        host=b"127.0.0.2:8086",
        body_length=0,
        had_length=False,
        client_ip="127.0.0.1",
        scheme="http",
    )


def sync_pieces(n: int) -> list[tuple[str, float]]:
    headers = _headers()
    base_url = httpx.URL(BACKEND)
    extensions = {"timeout": TIMEOUTS, "target": TARGET}
    full = BACKEND + TARGET.decode()
    metrics = Metrics()
    out = [
        ("headers.request_headers (3 client headers)", timed(_headers, n)),
        ("headers.response_headers (nginx's 5 headers)", timed(lambda: response_headers(NGINX_HEADERS), n)),
        (
            "httpx.Request(...) from a URL string, as proxy._build_request",
            timed(lambda: httpx.Request("GET", full, headers=headers, content=b"", extensions=extensions), n),
        ),
        (
            "httpx.Request(...) from a cached httpx.URL (target in the extension)",
            timed(
                lambda: httpx.Request("GET", base_url, headers=headers, content=b"", extensions=extensions), n
            ),
        ),
        ("httpx.URL(full URL string) alone", timed(lambda: httpx.URL(full), n)),
        (
            "httpx.Response(200, headers=nginx's) alone",
            timed(lambda: httpx.Response(200, headers=NGINX_HEADERS), n),
        ),
    ]

    def record() -> None:
        metrics.inflight.inc()
        metrics.inflight.dec()
        metrics.upstream_duration.observe(0.0004)
        metrics.outcome["ok"].inc()
        metrics.request_duration.observe(0.0005)

    out.append(("prometheus: inflight inc+dec, 2 histogram observes, 1 counter inc", timed(record, n)))

    access = logging.getLogger("bench.micro.access")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(TextFormatter())
    access.handlers[:] = [handler]
    access.propagate = False
    access.setLevel(logging.INFO)

    def log_line() -> None:
        handler.stream.seek(0)
        handler.stream.truncate()
        access.info(
            "request",
            extra={
                "fields": {
                    "method": "GET",
                    "path": "/query",
                    "query": redact_query(TARGET.partition(b"?")[2].decode("latin-1")),
                    "status": 200,
                    "outcome": "ok",
                    "backend": "127.0.0.2:8086",
                    "attempts": 1,
                    "held_ms": 0.0,
                    "duration_ms": 0.41,
                    "client": "127.0.0.1",
                }
            },
        )

    out.append(("access log line (TextFormatter + redact, to memory)", timed(log_line, n // 4)))
    writer = AccessLog("text")
    fields = {
        "method": "GET",
        "path": "/query",
        "query": redact_query(TARGET.partition(b"?")[2].decode("latin-1")),
        "status": 200,
        "outcome": "ok",
        "backend": "127.0.0.2:8086",
        "attempts": 1,
        "held_ms": 0.0,
        "duration_ms": 0.41,
        "client": "127.0.0.1",
    }
    out.append(
        (
            "access log line (AccessLog.line: the same line, no logging)",
            timed(lambda: writer.line(time.time(), fields), n),
        )
    )
    line = "2026-11-27T11:32:35.123Z INFO hyperbytedb_proxy.access request method=GET path=/query " * 1
    from app.logs import redact

    out.append(("  of which redact() of the formatted line (3 regexes)", timed(lambda: redact(line), n)))
    return out


async def async_pieces(n: int) -> list[tuple[str, float]]:
    transport = _FixedTransport()
    client = httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False)
    headers = _headers()
    extensions = {"timeout": TIMEOUTS, "target": TARGET}
    full = BACKEND + TARGET.decode()
    request = httpx.Request("GET", full, headers=headers, content=b"", extensions=extensions)

    async def via_client() -> None:
        response = await client.send(request, stream=True)
        await response.aclose()

    async def via_transport() -> None:
        response = await transport.handle_async_request(request)
        await response.aclose()

    class Endpoint:  # an instance, as ProxyEndpoint is: Starlette treats it as a raw ASGI app
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            return None

    endpoint = Endpoint()

    async def admin(request: Any) -> Response:
        return Response(b"")

    routes = [
        Route(p, admin, methods=["GET", "HEAD"])
        for p in ("/healthz", "/readyz", "/metrics", "/admin/backends")
    ]
    starlette = Starlette(routes=[*routes, Route("/{path:path}", endpoint)])
    scope = SCOPE

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def through_starlette() -> None:
        await starlette(dict(scope), receive, send)

    async def direct() -> None:
        await endpoint(dict(scope), receive, send)

    async def watcher() -> None:
        task = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)
        task.cancel()

    async def timeout_ctx() -> None:
        async with asyncio.timeout(60):  # noqa: ASYNC100 - the cost of the context itself is measured
            pass

    out = [
        (
            "a whole proxied request (ProxyEndpoint, access log on, instant forwarder)",
            await proxied_request(n),
        ),
        ("AsyncClient.send(stream=True) + aclose, instant transport", await atimed(via_client, n)),
        ("transport.handle_async_request + aclose, same transport", await atimed(via_transport, n)),
        (
            "Starlette app (middleware + router, 5 routes) to a raw ASGI endpoint",
            await atimed(through_starlette, n),
        ),
        ("the same endpoint called directly", await atimed(direct, n)),
        ("a disconnect-watcher task per request (create, run once, cancel)", await atimed(watcher, n)),
        ("async with asyncio.timeout(60) (entered and left)", await atimed(timeout_ctx, n)),
    ]
    await client.aclose()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="calls per round (best of 3 rounds)")
    parser.add_argument(
        "--profile", action="store_true", help="only the whole proxied request, under cProfile"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, Any]], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.profile:
        runner(proxied_request(args.n, profile=True))
        return 0
    results = sync_pieces(args.n) + runner(async_pieces(args.n))
    width = max(len(name) for name, _ in results)
    print(f"{'piece of the per-request path':<{width}}  us/call")
    for name, us in results:
        print(f"{name:<{width}}  {us:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
