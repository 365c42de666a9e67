"""The bounded httptools protocol, driven in-process through a fake transport."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.http_protocol import ClientLimits, LimitedHttpToolsProtocol, limited_protocol
from app.main import create_app
from app.server import uvicorn_config
from tests.unit.harness import make_settings

pytestmark = pytest.mark.anyio

LIMITS = ClientLimits(
    max_head_bytes=2048, max_headers=10, header_timeout=0.2, body_timeout=0.2, send_timeout=0.2
)


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.9", 5555), "sockname": ("127.0.0.1", 8086)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += bytes(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def violations() -> list[str]:
    return []


@pytest.fixture
def connect(violations: list[str]) -> Iterator[Any]:
    protocols: list[LimitedHttpToolsProtocol] = []

    def make() -> tuple[LimitedHttpToolsProtocol, FakeTransport]:
        config = uvicorn.Config(_app, lifespan="off", log_config=None)
        config.load()
        protocol = LimitedHttpToolsProtocol(
            config,
            ServerState(),
            {},
            asyncio.get_running_loop(),
            limits=LIMITS,
            on_violation=violations.append,
        )
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocols.append(protocol)
        return protocol, transport

    yield make
    for protocol in protocols:
        protocol.connection_lost(None)


async def test_head_over_the_limit_gets_431_and_a_lingering_close(
    connect: Any, violations: list[str]
) -> None:
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.eof and not transport.closed  # FIN now, close after the linger
    assert violations == ["head_size"]
    protocol.data_received(b"a" * 100_000)  # what still arrives is dropped
    assert transport.written.count(b"HTTP/1.1") == 1


async def test_head_growing_in_small_pieces_is_cut_too(connect: Any, violations: list[str]) -> None:
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    for _ in range(100):
        if transport.written:
            break
        protocol.data_received(b"b" * 100)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert violations == ["head_size"]


async def test_too_many_headers_get_431(connect: Any, violations: list[str]) -> None:
    protocol, transport = connect()
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(11))
    protocol.data_received(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert violations == ["header_count"]


async def test_request_within_the_limits_is_served(connect: Any, violations: list[str]) -> None:
    protocol, transport = connect()
    protocol.data_received(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 204 ")
    assert violations == []


async def test_silent_connection_is_closed_without_an_answer(connect: Any, violations: list[str]) -> None:
    _, transport = connect()
    await asyncio.sleep(0.4)
    assert transport.closed and transport.written == b""
    assert violations == ["header_timeout"]


async def test_stalled_body_gets_408(connect: Any, violations: list[str]) -> None:
    protocol, transport = connect()
    protocol.data_received(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    await asyncio.sleep(0.5)
    assert transport.written.startswith(b"HTTP/1.1 408 ")
    assert violations == ["body_timeout"]


async def test_unread_response_is_aborted_after_the_send_timeout(connect: Any, violations: list[str]) -> None:
    protocol, transport = connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # a head in time
    protocol.pause_writing()
    await asyncio.sleep(0.1)
    protocol.resume_writing()  # progress: the clock restarts
    protocol.pause_writing()
    await asyncio.sleep(0.4)
    assert transport.closed
    assert violations == ["send_timeout"]


async def test_both_servers_use_the_bounded_protocol() -> None:
    settings = make_settings(max_header_bytes=4096, keepalive_timeout_secs=30)
    app = create_app(settings)
    config = uvicorn_config(app, settings, on_violation=app.state.proxy.metrics.count_client_violation)
    config.load()
    assert config.timeout_keep_alive == 30
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    assert isinstance(protocol, LimitedHttpToolsProtocol)
    assert protocol._limits == ClientLimits.from_settings(settings)
    assert callable(limited_protocol(LIMITS, print))
