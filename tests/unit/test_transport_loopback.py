"""The forwarding transport against a scripted HTTP server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from app.transport import UpstreamTransport

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, int, list[int]]]:
    """A TCP server on 127.0.0.1; yields (host, port, connection count)."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port, connections
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def keep_alive_server(responses: int = 100, body: bytes = b"ok") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(responses):
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: 1\r\nX-A: 2\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    return handler


def request(
    host: str, port: int, target: bytes = b"/ping", method: str = "GET", **kw: object
) -> httpx.Request:
    timeouts = {"connect": 1.0, "read": kw.pop("read", 2.0)}
    return httpx.Request(
        method, f"http://{host}:{port}/", extensions={"timeout": timeouts, "target": target}, **kw
    )  # type: ignore[arg-type]


async def fetch(transport: UpstreamTransport, req: httpx.Request) -> tuple[httpx.Response, bytes]:
    response = await transport.handle_async_request(req)
    body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
    await response.aclose()
    return response, body


async def test_keep_alive_connection_is_reused() -> None:
    transport = UpstreamTransport()
    async with serve(keep_alive_server()) as (host, port, connections):
        for _ in range(5):
            response, body = await fetch(transport, request(host, port))
            assert (response.status_code, body) == (200, b"ok")
            assert response.headers.get_list("x-a") == ["1", "2"]
        assert len(connections) == 1
        assert transport.idle_connections(host, port) == 1
    await transport.aclose()


async def test_exact_request_bytes_are_sent() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        seen.append(head + body)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    transport = UpstreamTransport()
    async with serve(handler) as (host, port, _):
        req = request(
            host, port, b"/write?db=a%20b&q=%22x%22", "POST", headers=[(b"host", b"h:1")], content=b"m v=1"
        )
        response, _ = await fetch(transport, req)
    assert response.status_code == 204
    assert seen == [b"POST /write?db=a%20b&q=%22x%22 HTTP/1.1\r\nhost: h:1\r\nContent-Length: 5\r\n\r\nm v=1"]
    await transport.aclose()


async def test_chunked_response_streams_and_connection_is_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"world"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    transport = UpstreamTransport()
    async with serve(handler) as (host, port, connections):
        for _ in range(2):
            _, body = await fetch(transport, request(host, port))
            assert body == b"hello world"
        assert len(connections) == 1
    await transport.aclose()


async def test_body_until_close_and_head_responses() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        await writer.drain()

    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    transport = UpstreamTransport()
    async with serve(until_close) as (host, port, _):
        _, body = await fetch(transport, request(host, port))
        assert body == b"all of it"
    async with serve(head) as (host, port, _):
        response, body = await asyncio.wait_for(fetch(transport, request(host, port, method="HEAD")), 2)
        assert response.headers["content-length"] == "1234" and body == b""
    await transport.aclose()


async def wait_idle(transport: UpstreamTransport, host: str, port: int, count: int) -> None:
    for _ in range(200):  # bounded: 2 s at most
        if transport.idle_connections(host, port) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"idle connections never reached {count}")


async def test_idle_connection_closed_by_backend_is_replaced_transparently() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # keep-alive was promised, but the server drops the connection right after

    transport = UpstreamTransport()
    async with serve(one_then_close) as (host, port, connections):
        for _ in range(3):
            _, body = await fetch(transport, request(host, port))
            assert body == b"ok"
            await wait_idle(transport, host, port, 0)  # the close was seen: nothing is sent there
        assert len(connections) == 3
    await transport.aclose()


async def test_reused_connection_lost_after_the_write_is_not_resent() -> None:
    arrivals: list[bytes] = []

    async def answer_once_then_swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        arrivals.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        head, _ = await read_request(reader)
        arrivals.append(head)  # read, then the connection is dropped without an answer

    transport = UpstreamTransport()
    async with serve(answer_once_then_swallow) as (host, port, connections):
        await fetch(transport, request(host, port))
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, request(host, port, b"/write", "POST", content=b"m v=1"))
        assert len(arrivals) == 2 and len(connections) == 1
    await transport.aclose()


async def test_connect_refused_and_timeouts_raise_httpx_errors() -> None:
    transport = UpstreamTransport()
    async with serve(keep_alive_server()) as (host, port, _):
        pass  # closed: nothing listens there any more
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(request(host, port))

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with serve(silent) as (host, port, _):
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(request(host, port, read=0.2))
    await transport.aclose()


async def test_connection_closed_before_response_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    transport = UpstreamTransport()
    for handler in (hang_up, garbage):
        async with serve(handler) as (host, port, _):
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.handle_async_request(request(host, port))
    await transport.aclose()


async def test_mid_body_failure_raises_read_error_and_connection_is_dropped() -> None:
    async def short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    transport = UpstreamTransport()
    async with serve(short_body) as (host, port, _):
        response = await transport.handle_async_request(request(host, port))
        with pytest.raises(httpx.ReadError):
            async for _ in response.stream:  # type: ignore[union-attr]
                pass
        await response.aclose()
        assert transport.idle_connections(host, port) == 0
    await transport.aclose()


async def test_unread_response_closes_its_connection() -> None:
    transport = UpstreamTransport()
    async with serve(keep_alive_server(body=b"x" * 100_000)) as (host, port, connections):
        response = await transport.handle_async_request(request(host, port))
        await response.aclose()  # abandoned mid-body, e.g. the client went away
        assert transport.idle_connections(host, port) == 0
        _, body = await fetch(transport, request(host, port))
        assert len(body) == 100_000 and len(connections) == 2
    await transport.aclose()


async def test_large_body_is_streamed_with_back_pressure() -> None:
    size = 8 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"z" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    transport = UpstreamTransport()
    async with serve(big) as (host, port, _):
        response = await transport.handle_async_request(request(host, port))
        await asyncio.sleep(0.3)  # the reader is slow: the transport must stop buffering
        conn = response.stream._reply._conn  # type: ignore[union-attr]
        assert conn._flow.buffered <= 2 * 1024 * 1024
        total = 0
        async for chunk in response.stream:  # type: ignore[union-attr]
            total += len(chunk)
        await response.aclose()
    assert total == size
    await transport.aclose()
