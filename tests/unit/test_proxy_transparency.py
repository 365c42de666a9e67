"""What the backend receives and what the client receives: exact bytes, end-to-end headers only."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.unit.harness import Harness

pytestmark = pytest.mark.anyio


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_413_for_declared_length_over_limit_without_reading_body() -> None:
    h = Harness(max_body_bytes=1000)
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"x" * 1001)
    assert r.status_code == 413 and "1001" in r.json()["error"]
    assert r.headers["connection"] == "close"
    assert not h.backends.calls
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "rejected"}) == 1


async def test_413_for_chunked_body_crossing_limit() -> None:
    h = Harness(max_body_bytes=1000)
    async with h.running():
        r = await h.client.post("/write?db=x", content=_chunks(b"a" * 600, b"b" * 600, b"c" * 600))
    assert r.status_code == 413 and "error" in r.json()
    assert not h.backends.calls


async def test_body_at_the_limit_passes() -> None:
    h = Harness(max_body_bytes=1000)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"x" * 1000)
    assert r.status_code == 204 and h.backends.calls.last.request.content == b"x" * 1000


async def test_buffered_bytes_cap_answers_503() -> None:
    h = Harness(max_buffered_bytes=100)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"x" * 101)
        ok = await h.client.post("/write?db=x", content=b"x" * 100)
    assert r.status_code == 503 and r.headers["retry-after"] and "buffering" in r.json()["error"]
    assert ok.status_code == 204
    assert h.metric("hyperbytedb_proxy_buffered_request_bytes") == 0


async def test_backend_gets_exact_end_to_end_headers_and_body() -> None:
    h = Harness(trusted_proxies="127.0.0.9")  # the client's X-Forwarded-For is believed and appended to
    h.backends.route().mock(return_value=httpx.Response(204))
    body = gzip.compress(b"cpu,host=a usage=1 1700000000000000000\n")
    client_headers = [
        ("Content-Encoding", "gzip"),
        ("Authorization", "Token secret"),
        ("X-Custom", "one"),
        ("X-Custom", "two"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "connection-scoped"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic eA=="),
        ("X-Forwarded-For", "192.0.2.1"),
    ]
    async with h.running():
        transport = httpx.ASGITransport(app=h.app, client=("127.0.0.9", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            # Built directly, the request carries no client-library default headers.
            request = httpx.Request(
                "POST", "http://proxy/write?db=x&precision=ns", headers=client_headers, content=body
            )
            r = await client.send(request)
    assert r.status_code == 204
    sent = h.backends.calls.last.request
    assert sent.content == body  # gzip stays gzip, byte for byte
    assert sent.headers.raw == [
        (b"host", b"127.0.0.2:8086"),
        (b"content-encoding", b"gzip"),
        (b"authorization", b"Token secret"),
        (b"x-custom", b"one"),
        (b"x-custom", b"two"),
        (b"x-forwarded-for", b"192.0.2.1, 127.0.0.9"),
        (b"x-forwarded-proto", b"http"),
        (b"content-length", str(len(body)).encode()),
    ]


async def test_path_and_query_pass_byte_for_byte() -> None:
    h = Harness()
    h.backends.route().mock(return_value=httpx.Response(200))
    target = b"/query?db=my%20db&q=SELECT+%2A+FROM+%22cpu%22+WHERE+time+%3E+now%28%29&epoch=ms&u=a&p=b"
    async with h.running():
        r = await h.client.get(target.decode())
    assert r.status_code == 200
    assert h.backends.calls.last.request.extensions["target"] == target


async def test_client_gets_backend_status_headers_and_raw_body() -> None:
    h = Harness()
    payload = gzip.compress(json.dumps({"results": [{"statement_id": 0}]}).encode())
    h.backends.route().mock(
        return_value=httpx.Response(
            200,
            headers=[
                ("Content-Encoding", "gzip"),
                ("Content-Type", "application/json"),
                ("X-Influxdb-Version", "0.8.3"),
                ("Request-Id", "abc"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("Connection", "keep-alive, X-Conn-Scoped"),
                ("X-Conn-Scoped", "x"),
                ("Keep-Alive", "timeout=5"),
            ],
            content=payload,
        )
    )
    async with h.running(), h.client.stream("GET", "/query?q=x") as r:
        body = b"".join([chunk async for chunk in r.aiter_raw()])
    assert r.status_code == 200
    names = [name.lower() for name, _ in r.headers.raw]
    assert names.count(b"set-cookie") == 2 and names.count(b"date") == 1
    assert b"connection" not in names and b"keep-alive" not in names and b"x-conn-scoped" not in names
    assert r.headers["x-influxdb-version"] == "0.8.3" and r.headers["request-id"] == "abc"
    assert body == payload  # relayed compressed, not decoded


async def test_access_log_line_and_redaction(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    h.backends.route().mock(return_value=httpx.Response(204))
    caplog.set_level(logging.INFO, logger="hyperbytedb_proxy.access")
    async with h.running():
        await h.client.post(
            "/write?db=x&u=admin&p=hunter2", content=b"m v=1 1", headers={"Authorization": "Basic c2VjcmV0"}
        )
    (record,) = [r for r in caplog.records if r.name == "hyperbytedb_proxy.access"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["method"] == "POST" and fields["path"] == "/write" and fields["status"] == 204
    assert fields["backend"] == "127.0.0.2:8086" and fields["attempts"] == 1 and fields["duration_ms"] >= 0
    assert "hunter2" not in fields["query"] and "u=admin" in fields["query"]
    assert "c2VjcmV0" not in caplog.text and "hunter2" not in caplog.text


async def test_body_shorter_than_its_content_length_is_never_forwarded() -> None:
    h = Harness()
    route = h.backends.route().mock(return_value=httpx.Response(204))

    async def app_receive_short() -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/write",
            "raw_path": b"/write",
            "query_string": b"db=x",
            "headers": [(b"content-length", b"10")],
            "client": ("127.0.0.9", 1),
        }
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return next(messages)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        await h.state.proxy(scope, receive, send)
        assert sent[0]["status"] == 400
        assert b"does not match its Content-Length" in sent[1]["body"]  # type: ignore[operator]

    async with h.running():
        await app_receive_short()
    assert not route.called
    assert h.metric("hyperbytedb_proxy_buffered_request_bytes") == 0


async def test_bytes_are_reserved_as_they_arrive_not_on_the_declared_length() -> None:
    h = Harness(max_buffered_bytes=1000)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        # Declared 900 bytes, not sent yet: nothing is held, so another write still fits.
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/write",
            "raw_path": b"/write",
            "query_string": b"db=x",
            "headers": [(b"content-length", b"900")],
            "client": ("127.0.0.9", 1),
        }
        gate: asyncio.Event = asyncio.Event()
        chunks = [b"x" * 450, b"x" * 450]

        async def receive() -> dict[str, object]:
            await gate.wait()
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict[str, object]) -> None:
            pass

        slow = asyncio.ensure_future(h.state.proxy(scope, receive, send))
        await asyncio.sleep(0.01)
        assert h.metric("hyperbytedb_proxy_buffered_request_bytes") == 0
        other = await h.client.post("/write?db=x", content=b"y" * 800)
        assert other.status_code == 204
        gate.set()
        await asyncio.wait_for(slow, 5)
    assert h.metric("hyperbytedb_proxy_buffered_request_bytes") == 0
