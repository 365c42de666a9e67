"""A lean HTTP/1.1 transport for httpx, built for forwarding to a few backends.

httpx's default transport (httpcore) walks every pooled connection for every
request, which collapses throughput once a proxy holds dozens of keep-alive
connections.  A proxy needs much less: plain HTTP/1.1 to a handful of IPs,
a LIFO stack of idle connections per backend, and a response body streamed
with back-pressure.  This transport does that on an asyncio ``Protocol`` with
httptools' response parser (the one uvicorn uses for requests), and raises
httpx's own exception types so callers classify failures the usual way.

It honours the ``timeout`` request extension (``connect`` and ``read``
seconds, as httpx sets them) and the ``target`` extension (the exact request
target bytes, so a path and query string pass through unchanged).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator

import httptools
import httpx

HIGH_WATER = 256 * 1024  # pause reading from a backend beyond this much unread body
LOW_WATER = 64 * 1024
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 1.0

HostKey = tuple[str, int]


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses one response at a time."""

    def __init__(self, key: HostKey) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.message_done = False
        self.keep_alive = False
        self.head_only = False
        self.received_any = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.head_only and self.headers_done:
            return  # a body after a HEAD response is a protocol error; the connection is not reused
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("backend switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from backend: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.message_done and self._body_until_close():
            self.message_done = True  # an HTTP/1.0-style body ends with the connection
        elif not self.message_done:
            reason = "backend closed the connection"
            if not self.headers_done:
                reason += " without sending a response"
            self._error = self._error or httpx.RemoteProtocolError(
                reason if exc is None else f"{reason}: {exc}"
            )
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # interim response (100 Continue): wait for the final one
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        if self.head_only:
            self.message_done = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # end of an interim response
        self.message_done = True
        self._wake()

    # -- used by the transport --------------------------------------------

    def _body_until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float, what: str) -> None:
        # A bare timer handle: this runs for every response and every body
        # chunk, where asyncio.timeout's context manager costs several µs.
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            raise httpx.ReadTimeout(f"backend sent no {what} within {timeout:g}s") from None
        finally:
            timer.cancel()
            self._waiter = None

    def start(self, data: bytes, *, head_only: bool) -> None:
        self._reset()
        self._parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        if self.transport is None or self.closed:
            raise httpx.WriteError("connection to backend is closed")
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._drain_waiter
            except TimeoutError:
                raise httpx.WriteTimeout(f"backend did not read the request within {timeout:g}s") from None
        if self._error is not None:
            raise self._error

    async def read_head(self, timeout: float) -> None:
        while not self.headers_done:
            if self._error is not None:
                raise self._error
            await self._wait(timeout, "response headers")

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of body, or b"" at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < LOW_WATER and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return chunk
            if self.message_done:
                return b""
            if self._error is not None:
                raise httpx.ReadError(str(self._error)) from self._error
            await self._wait(timeout, "body data")

    @property
    def reusable(self) -> bool:
        return self.message_done and self.keep_alive and not self.closed and not self._chunks

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _ResponseStream(httpx.AsyncByteStream):
    """Streams a response body; hands the connection back when it was read to the end."""

    def __init__(self, pool: UpstreamTransport, conn: _Connection, read_timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._read_timeout = read_timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while chunk := await conn.read_chunk(self._read_timeout):
            yield chunk

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._conn)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections to backends, reused most-recent first."""

    def __init__(
        self,
        *,
        max_idle_per_host: int = 256,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        # Pods are dialled by IP; their certificates name the Service.
        self._ssl = ssl_context
        self._server_hostname = server_hostname if ssl_context is not None else None
        self._idle: dict[HostKey, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.host, url.port or 80)
        timeouts = request.extensions.get("timeout") or {}
        connect_timeout = timeouts.get("connect") or DEFAULT_CONNECT_TIMEOUT
        read_timeout = timeouts.get("read") or DEFAULT_READ_TIMEOUT
        data = await self._serialize(request)
        head_only = request.method == "HEAD"

        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, data, head_only, read_timeout)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                if conn.received_any:
                    raise
                # The backend closed this idle connection as we reused it: it
                # saw nothing, so sending once more on a new connection is safe.
        conn = await self._connect(key, connect_timeout)
        return await self._exchange(conn, data, head_only, read_timeout)

    async def _exchange(
        self, conn: _Connection, data: bytes, head_only: bool, read_timeout: float
    ) -> httpx.Response:
        try:
            conn.start(data, head_only=head_only)
            await conn.drain(read_timeout)
            await conn.read_head(read_timeout)
        except BaseException:
            conn.close()
            raise
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_ResponseStream(self, conn, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    @staticmethod
    async def _serialize(request: httpx.Request) -> bytes:
        target = request.extensions.get("target") or request.url.raw_path
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            lines += (name, b": ", value, b"\r\n")
        lines += (b"\r\n", body)
        return b"".join(lines)

    async def _connect(self, key: HostKey, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = key
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(key),
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                    ssl_handshake_timeout=timeout if self._ssl is not None else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise httpx.ConnectError(
                f"cannot connect to {host}:{port}: certificate verify failed: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            detail = exc.reason or str(exc)
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: TLS failed: {detail}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        return conn

    def _take_idle(self, key: HostKey) -> _Connection | None:
        stack = self._idle.get(key)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if not conn.closed and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if not conn.reusable or self._closed:
            conn.close()
            return
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        stack.append(conn)

    def idle_connections(self, host: str, port: int) -> int:
        return sum(not c.closed for c in self._idle.get((host, port), ()))

    def forget(self, host: str, port: int) -> None:
        """Close the idle connections to a backend that left the pool."""
        for conn in self._idle.pop((host, port), ()):
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()
