"""A response head waits for its first body write, so a small response leaves in one write."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.http_protocol import LimitedHttpToolsProtocol
from tests.unit.test_http_protocol import LIMITS, FakeTransport

pytestmark = pytest.mark.anyio

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class CountingTransport(FakeTransport):
    """Each write or writelines call is one system call on a real transport."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bytes] = []

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.calls.append(bytes(data))
        super().write(data)

    def writelines(self, pieces: Any) -> None:
        joined = b"".join(pieces)
        self.calls.append(joined)
        FakeTransport.write(self, joined)


async def _serve(app: App, *requests: bytes) -> CountingTransport:
    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    loop = asyncio.get_running_loop()
    protocol = LimitedHttpToolsProtocol(
        config, ServerState(), {}, loop, limits=LIMITS, on_violation=lambda limit: None
    )
    transport = CountingTransport()
    protocol.connection_made(transport)
    try:
        for request in requests:
            protocol.data_received(request)
        for _ in range(50):
            await asyncio.sleep(0)
    finally:
        protocol.connection_lost(None)
    return transport


def _answer(body: bytes, **start: Any) -> App:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers, **start})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_a_small_response_leaves_in_one_write() -> None:
    transport = await _serve(_answer(b'{"results":[]}'), b"GET /query HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(transport.calls) == 1
    assert transport.calls[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.calls[0].endswith(b'\r\n\r\n{"results":[]}')


async def test_a_head_response_is_written_when_the_cycle_completes() -> None:
    transport = await _serve(_answer(b"not sent"), b"HEAD /query HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(transport.calls) == 1
    assert transport.calls[0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.calls[0].endswith(b"\r\n\r\n")


async def test_continue_goes_out_at_once_and_the_head_still_waits_for_the_body() -> None:
    request = b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    transport = await _serve(_answer(b"ok"), request, b"m=1")
    assert transport.calls[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(transport.calls) == 2 and transport.calls[1].endswith(b"\r\n\r\nok")


async def test_a_slow_first_chunk_does_not_hold_the_head() -> None:
    transport = CountingTransport()
    written_before_the_chunk: list[bytes] = []

    async def streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.05)  # the first chunk is slow (a long query)
        written_before_the_chunk.extend(transport.calls)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})

    config = uvicorn.Config(streaming, lifespan="off", log_config=None)
    config.load()
    protocol = LimitedHttpToolsProtocol(
        config, ServerState(), {}, asyncio.get_running_loop(), limits=LIMITS, on_violation=lambda limit: None
    )
    protocol.connection_made(transport)
    protocol.data_received(b"GET /query HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if len(transport.calls) == 2:
            break
        await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    assert len(written_before_the_chunk) == 1 and written_before_the_chunk[0].startswith(
        b"HTTP/1.1 200 OK\r\n"
    )
    assert transport.calls[1] == b"4\r\nlate\r\n0\r\n\r\n"


async def test_pipelined_responses_keep_their_order() -> None:
    requests = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"

    async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": body})

    transport = await _serve(echo, requests)
    assert len(transport.calls) == 2
    assert transport.calls[0].endswith(b"/a") and transport.calls[1].endswith(b"/b")
