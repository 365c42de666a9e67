"""The forwarding transport's HTTP/1.1 connection, byte by byte against a mock asyncio transport.

No sockets: each test feeds ``data_received`` exactly the bytes a backend
could send and checks what the caller sees and whether the connection may
carry another request, the way uvicorn tests its protocols.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.forwarder import origin_of
from app.transport import (
    HIGH_WATER,
    ConnectionState,
    InvalidResponse,
    UpstreamTransport,
    _Connection,
)

pytestmark = pytest.mark.anyio

KEY = origin_of("http", "127.0.0.2", 8086)
REQUEST = (b"GET /ping HTTP/1.1\r\nhost: a\r\n\r\n",)


class MockTransport:
    """Records writes; closing reports connection_lost on the next loop turn, as asyncio does."""

    def __init__(self, protocol: _Connection, *, write_fails: bool = False) -> None:
        self.protocol = protocol
        self.written = bytearray()
        self.closing = False
        self.reading = True
        self.write_buffer = 0
        self.write_fails = write_fails
        self.writes = 0  # write or writelines calls: each is one system call on a real transport

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.write_fails:
            self.close()  # what asyncio does when the first send() fails: nothing left
            return
        self.written += data

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        self.writes += 1
        for piece in pieces:
            self.write(piece)
        self.writes -= len(pieces)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.write_buffer = 0
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.write_buffer


def connect(**limits: int) -> tuple[_Connection, MockTransport]:
    conn = _Connection(KEY, limits.get("max_header_bytes", 65536), limits.get("max_headers", 100))
    mock = MockTransport(conn)
    conn.connection_made(mock)  # type: ignore[arg-type]
    return conn, mock


async def exchange(
    *pieces: bytes, head_only: bool = False, **limits: int
) -> tuple[_Connection, MockTransport, bytes]:
    """Send a request, feed the response in ``pieces``, read it all; returns the body."""
    conn, mock = connect(**limits)
    assert conn.send(REQUEST, head_only=head_only)
    for piece in pieces:
        conn.data_received(piece)
    await conn.read_head(1.0)
    body = b""
    while chunk := await conn.read_chunk(1.0):
        body += chunk
    return conn, mock, body


async def settle() -> None:
    """Let the mock's connection_lost callbacks run."""
    for _ in range(3):
        await asyncio.sleep(0)


# -- framing ---------------------------------------------------------------


async def test_content_length_body_split_anywhere_and_connection_reusable() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello world"
    conn, mock, body = await exchange(*(raw[i : i + 7] for i in range(0, len(raw), 7)))
    assert (conn.status, conn.reason, body) == (200, b"OK", b"hello world")
    assert conn.headers == [(b"Content-Length", b"11"), (b"X-A", b"1"), (b"X-A", b"2")]
    assert mock.written == REQUEST[0]
    assert conn.finish() and conn.state is ConnectionState.IDLE


async def test_chunked_body_and_its_trailers_are_dropped() -> None:
    conn, _, body = await exchange(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n",
        b"6\r\nhello \r\n5\r\nworld\r\n",
        b"0\r\nSet-Cookie: stolen=1\r\nX-Late: 1\r\n\r\n",
    )
    assert body == b"hello world"
    assert all(name not in (b"Set-Cookie", b"X-Late") for name, _ in conn.headers)
    assert conn.finish()


async def test_oversized_trailers_are_invalid() -> None:
    conn, _ = connect(max_header_bytes=100)
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    await conn.read_head(1.0)
    assert await conn.read_chunk(1.0) == b"ok"
    conn.data_received(b"0\r\nX-Big: " + b"x" * 200 + b"\r\n\r\n")
    with pytest.raises(InvalidResponse, match="too big"):
        await conn.read_chunk(1.0)


async def test_close_delimited_body_ends_with_a_clean_close() -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.0 200 OK\r\n\r\nall ")
    conn.data_received(b"of it")
    conn.connection_lost(None)
    await conn.read_head(1.0)
    assert [await conn.read_chunk(1.0) for _ in range(3)] == [b"all ", b"of it", b""]
    assert not conn.finish()


async def test_reset_in_a_close_delimited_body_is_an_error_not_an_end() -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
    conn.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    await conn.read_head(1.0)
    assert await conn.read_chunk(1.0) == b"partial"
    with pytest.raises(httpx.ReadError, match="reset"):
        await conn.read_chunk(1.0)


async def test_head_response_has_no_body_whatever_its_length_says() -> None:
    conn, _, body = await exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", head_only=True)
    assert body == b"" and (b"Content-Length", b"1234") in conn.headers
    assert not conn.finish()  # the length it announced was never sent: do not guess, reconnect


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_end_at_the_head_and_keep_the_connection(status: int) -> None:
    conn, _, body = await exchange(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status)
    assert (conn.status, body) == (status, b"")
    assert conn.finish()


async def test_bytes_after_a_bodiless_status_close_the_connection_unparsed() -> None:
    conn, mock, body = await exchange(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n"
    )
    assert (conn.status, body) == (204, b"")
    assert all(name != b"X-Evil" for name, _ in conn.headers)
    assert mock.closing and not conn.finish()


async def test_interim_responses_are_skipped() -> None:
    conn, _, body = await exchange(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    )
    assert (conn.status, conn.headers, body) == (201, [(b"Content-Length", b"2")], b"ok")
    assert conn.finish()


async def test_interim_response_with_a_body_is_invalid_and_its_payload_never_seen() -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(InvalidResponse):
        await conn.read_head(1.0)
    assert conn.status == 0


async def test_switching_protocols_is_invalid() -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n")
    with pytest.raises(InvalidResponse, match="switched protocols"):
        await conn.read_head(1.0)


@pytest.mark.parametrize("status", [b"600", b"099", b"999"])
async def test_status_outside_100_to_599_is_invalid(status: bytes) -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(InvalidResponse, match="outside 100-599"):
        await conn.read_head(1.0)


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
)
async def test_bad_framing_in_the_head_is_invalid(raw: bytes) -> None:
    conn, mock = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(raw)
    with pytest.raises(InvalidResponse):
        await conn.read_head(1.0)
    assert mock.closing


async def test_bad_chunk_framing_mid_body_is_invalid() -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n")
    await conn.read_head(1.0)
    assert await conn.read_chunk(1.0) == b"ok"
    with pytest.raises(InvalidResponse):
        await conn.read_chunk(1.0)


# -- limits ----------------------------------------------------------------


async def test_head_over_the_byte_limit_is_invalid_even_when_it_arrives_whole() -> None:
    conn, _ = connect(max_header_bytes=200)
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 300 + b"\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(InvalidResponse, match="too big a response head"):
        await conn.read_head(1.0)


async def test_unfinished_head_over_the_byte_limit_fails_before_it_ends() -> None:
    conn, mock = connect(max_header_bytes=1024)
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for _ in range(3):
        conn.data_received(b"x" * 500)  # one header value, never finished
    with pytest.raises(InvalidResponse, match="too big"):
        await conn.read_head(1.0)
    assert mock.closing


async def test_head_just_under_the_limits_is_accepted() -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(99))
    conn, _, body = await exchange(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\nok")
    assert len(conn.headers) == 100 and body == b"ok"


async def test_too_many_headers_is_invalid() -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n")
    with pytest.raises(InvalidResponse, match="more than 100"):
        await conn.read_head(1.0)


# -- connection life -------------------------------------------------------


async def test_close_before_any_response_is_a_protocol_error() -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.connection_lost(None)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response") as caught:
        await conn.read_head(1.0)
    assert not isinstance(caught.value, InvalidResponse)  # a dead backend, retryable


async def test_close_mid_body_is_a_read_error() -> None:
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    conn.connection_lost(None)
    await conn.read_head(1.0)
    assert await conn.read_chunk(1.0) == b"partial"
    with pytest.raises(httpx.ReadError):
        await conn.read_chunk(1.0)
    assert not conn.finish()


async def test_extra_bytes_after_the_response_close_it_and_are_never_parsed() -> None:
    conn, mock, body = await exchange(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: smuggled=1\r\nContent-Length: 0\r\n\r\n",
    )
    assert body == b"ok" and all(name != b"Set-Cookie" for name, _ in conn.headers)
    assert mock.closing and not conn.finish()


async def test_pipelined_extra_bytes_in_the_same_segment_close_the_connection() -> None:
    conn, mock, body = await exchange(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Smuggled\r\nContent-Length: 0\r\n\r\n"
    )
    assert (conn.status, body) == (200, b"ok")
    assert mock.closing and not conn.finish()


async def test_unsolicited_bytes_on_an_idle_connection_close_it() -> None:
    conn, mock, _ = await exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert conn.finish()
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert mock.closing and conn.state is ConnectionState.CLOSED


async def test_response_without_keep_alive_is_not_reused() -> None:
    conn, _, _ = await exchange(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not conn.finish()


async def test_early_answer_before_the_request_is_written_is_read_and_not_reused() -> None:
    conn, mock = connect()
    conn.send(REQUEST, head_only=False)
    mock.write_buffer = 10_000_000  # the backend has not read the body
    conn.data_received(b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno")
    await asyncio.wait_for(conn.read_head(30.0), 1.0)
    assert conn.status == 413 and await conn.read_chunk(1.0) == b"no"
    assert not conn.keep_alive and not conn.finish()
    assert mock.closing and mock.write_buffer == 0  # aborted: the unsent rest is dropped


async def test_slow_backend_is_a_read_timeout() -> None:
    conn, mock = connect()
    conn.send(REQUEST, head_only=False)
    with pytest.raises(httpx.ReadTimeout):
        await conn.read_head(0.05)
    assert mock.closing


async def test_the_read_deadline_moves_with_each_wait_on_one_timer() -> None:
    loop = asyncio.get_running_loop()
    # A long wait that ends early leaves its timer armed; a shorter later wait still times out on time.
    conn, _, _ = await exchange(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert conn.finish()
    conn.send(REQUEST, head_only=False)
    started = loop.time()
    with pytest.raises(httpx.ReadTimeout):
        await conn.read_head(0.05)
    assert 0.04 <= loop.time() - started < 1.0

    # The timer armed by the first wait fires before the second wait's deadline: it re-arms.
    conn, _ = connect()
    conn.send(REQUEST, head_only=False)
    pending = asyncio.ensure_future(conn.read_head(0.2))
    await asyncio.sleep(0.1)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    await pending
    started = loop.time()
    with pytest.raises(httpx.ReadTimeout):
        await conn.read_chunk(0.2)
    assert 0.18 <= loop.time() - started < 1.0  # not at the first timer's 0.1 s


async def test_reading_pauses_above_the_high_water_mark_and_resumes_when_read() -> None:
    conn, mock = connect()
    conn.send(REQUEST, head_only=False)
    size = 2 * HIGH_WATER
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    for _ in range(size // 65536):
        conn.data_received(b"z" * 65536)
    assert not mock.reading
    await conn.read_head(1.0)
    total = 0
    while chunk := await conn.read_chunk(1.0):
        total += len(chunk)
    assert total == size and mock.reading and conn.finish()


# -- the pool: reuse and (no) resends --------------------------------------


def request(method: str = "GET", content: bytes = b"") -> httpx.Request:
    return httpx.Request(
        method,
        f"{KEY.url}/",
        content=content,
        extensions={"timeout": {"connect": 0.5, "read": 1.0}, "target": b"/write"},
    )


async def pooled(transport: UpstreamTransport, **mock_options: bool) -> MockTransport:
    """A connection that served one response and went back to the pool idle."""
    conn, _, _ = await exchange(b"HTTP/1.1 204 No Content\r\n\r\n")
    mock = MockTransport(conn, **mock_options)
    conn.connection_made(mock)  # type: ignore[arg-type]
    transport.release(conn)
    return mock


async def test_idle_connection_is_reused_most_recent_first() -> None:
    transport = UpstreamTransport()
    older, newer = await pooled(transport), await pooled(transport)
    assert transport.idle_connections(KEY.host, KEY.port) == 2
    pending = asyncio.ensure_future(transport.handle_async_request(request("POST", b"m v=1")))
    await settle()
    assert newer.written.startswith(b"POST /write HTTP/1.1\r\n") and newer.written.endswith(b"\r\n\r\nm v=1")
    assert older.written == b""
    newer.protocol.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    response = await pending
    await response.aclose()
    assert response.status_code == 204 and transport.idle_connections(KEY.host, KEY.port) == 2


async def test_closing_or_failed_write_connections_are_skipped_without_a_resend() -> None:
    transport = UpstreamTransport()
    good = await pooled(transport)
    failing = await pooled(transport, write_fails=True)
    closing = await pooled(transport)
    closing.closing = True  # the backend's close was seen while it sat idle
    pending = asyncio.ensure_future(transport.handle_async_request(request("POST", b"m v=1")))
    await settle()
    assert (closing.written, failing.written) == (b"", b"")
    assert good.written.count(b"POST /write") == 1
    good.protocol.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert (await pending).status_code == 204


async def test_connection_lost_after_the_write_surfaces_instead_of_resending() -> None:
    transport = UpstreamTransport()
    other = await pooled(transport)
    used = await pooled(transport)
    pending = asyncio.ensure_future(transport.handle_async_request(request("POST", b"m v=1")))
    await settle()
    used.protocol.connection_lost(None)  # read the request, then hung up
    with pytest.raises(httpx.RemoteProtocolError):
        await pending
    assert used.written.count(b"POST") == 1 and other.written == b""


async def test_unread_response_closes_its_connection_on_release() -> None:
    transport = UpstreamTransport()
    mock = await pooled(transport)
    pending = asyncio.ensure_future(transport.handle_async_request(request()))
    await settle()
    mock.protocol.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    response = await pending
    await response.aclose()  # abandoned mid-body, e.g. the client went away
    assert mock.closing and transport.idle_connections(KEY.host, KEY.port) == 0
