"""A lean HTTP/1.1 transport for httpx, built for forwarding to a few backends.

httpx's default transport (httpcore) walks every pooled connection for every
request, which collapses throughput once a proxy holds dozens of keep-alive
connections.  A proxy needs much less: HTTP/1.1 to a handful of IPs, a LIFO
stack of idle connections per backend, and a response body streamed with
back-pressure.  This transport does that on an asyncio ``Protocol`` with
httptools' response parser (the one uvicorn uses for requests), and raises
httpx's own exception types so callers classify failures the usual way.

It trusts the backend no more than a client: the response head is bounded in
bytes and header count, a response ends where its framing says (anything
after it closes the connection), trailers and interim (1xx) responses never
reach the caller, and whatever breaks those rules raises ``InvalidResponse``.
A request is written once: only when the backend provably received none of
it (the reused connection was already closing, or the first write failed) is
it sent on another connection; every other failure goes back to the caller,
whose retry policy decides.

The proxy calls :meth:`UpstreamTransport.forward` (the
:class:`app.forwarder.Forwarder` contract: request bytes in, status, headers
and body chunks out, no httpx models on the way).  As an httpx transport it
honours the ``timeout`` request extension (``connect`` and ``read`` seconds,
as httpx sets them) and the ``target`` extension (the exact request target
bytes, so a path and query string pass through unchanged).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ssl
import time
from collections.abc import AsyncIterator

import httptools
import httpx

from app.forwarder import Header, Origin, Timeouts, origin_of

HIGH_WATER = 256 * 1024  # pause reading from a backend beyond this much unread body
LOW_WATER = 64 * 1024
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024  # nginx's proxy_buffer_size is 4-8 KiB; InfluxDB heads are small
DEFAULT_MAX_HEADERS = 100
HEADER_LINE_OVERHEAD = 4  # ": " and CRLF, counted so the limit means bytes on the wire
# A body up to this size is copied behind the head so the request leaves in one
# write; a larger one goes out with the head in one writev, without the copy.
COALESCE_BODY_BYTES = 16 * 1024


class InvalidResponse(httpx.RemoteProtocolError):
    """The backend sent something that is not a valid HTTP/1.1 response.

    Not a transient failure: another attempt meets the same backend software,
    so a proxy answers 502 rather than retrying.
    """


class ConnectionState(enum.Enum):
    """Where a connection is in its life; only IDLE connections sit in the pool."""

    NEW = "new"  # connected, no request yet
    ACTIVE = "active"  # a request was written; its response is being read
    IDLE = "idle"  # the last response ended cleanly and the connection may carry another
    CLOSED = "closed"


class ResponsePhase(enum.Enum):
    """How far the current response has been parsed."""

    HEAD = "head"  # waiting for the final response head (interim ones are skipped)
    BODY = "body"
    DONE = "done"


# Module-level names for the members: the hot path compares against them on
# every callback, and a global lookup is cheaper than an enum attribute.
NEW, ACTIVE, IDLE, CLOSED = ConnectionState
HEAD, BODY, DONE = ResponsePhase


class FlowControl:
    """Back-pressure from the caller to the backend: stop reading while too much body is unread."""

    __slots__ = ("_transport", "buffered", "read_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.buffered = 0
        self.read_paused = False

    def added(self, size: int) -> None:
        self.buffered += size
        if self.buffered > HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def taken(self, size: int) -> None:
        self.buffered -= size
        if self.read_paused and self.buffered < LOW_WATER:
            self.read_paused = False
            self._transport.resume_reading()


def expire_after(
    loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], timeout: float
) -> asyncio.TimerHandle:
    """Make ``waiter`` raise TimeoutError after ``timeout`` seconds; cancel the handle when done.

    A bare timer handle rather than ``asyncio.timeout``: the context manager
    (or one more coroutine) costs µs.  Used for connecting; reads keep one
    lazily re-armed timer per connection (``_Connection._deadline_passed``).
    """
    return loop.call_later(timeout, _expire, waiter)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _Stop(Exception):
    """Raised from a parser callback to stop parsing; the reason is already stored."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a backend; parses one response at a time."""

    def __init__(self, key: Origin, max_header_bytes: int, max_headers: int) -> None:
        self.key = key
        self.state = NEW
        self.idle_since = 0.0
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._flow: FlowControl  # set in connection_made, before any data
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # loop time by which the awaited response data must arrive
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: collections.deque[bytes] = collections.deque()  # empty whenever IDLE
        self._begin(head_only=False)

    def _begin(self, *, head_only: bool) -> None:
        self.phase = HEAD
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.head_only = head_only
        self.error: httpx.TransportError | None = None
        self._head_wire_bytes = 0  # raw bytes while the head is awaited, interim heads included
        self._head_size = 0  # status and header lines of the current message (or its trailers)

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._flow = FlowControl(self._transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.state is not ACTIVE or self.phase is DONE:
            # Bytes nobody asked for: never parsed, and the connection is not reused.
            self.close()
            return
        if self.phase is HEAD:
            self._head_wire_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidResponse("backend switched protocols"))
        except httptools.HttpParserError as exc:
            if self.phase is DONE:
                self.close()  # bytes after a complete response: it stands, the connection goes
            elif self.error is None:
                self._fail(InvalidResponse(f"invalid HTTP response from backend: {exc}"))
            return
        if self.phase is HEAD and self._head_wire_bytes > self._max_header_bytes:
            self._fail(self._too_big("response head"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self.phase is BODY and self.error is None:
            if exc is None and self._body_until_close():
                self.phase = DONE  # an HTTP/1.0-style body ends with the connection
            else:
                self.error = httpx.ReadError(_closed_reason("in the middle of the response body", exc))
        elif self.phase is HEAD and self.error is None:
            self.error = httpx.RemoteProtocolError(_closed_reason("without sending a response", exc))
        _wake(self._waiter)

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        if self.phase is not HEAD:
            raise _Stop  # a second response after this one: never parsed
        self.headers = []
        self.reason = b""
        self._head_size = 0

    def on_status(self, status: bytes) -> None:
        self.reason += status  # its size is counted with the head's, at on_headers_complete

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_size = self._head_size + len(name) + len(value) + HEADER_LINE_OVERHEAD
        if self.phase is BODY:  # a trailer: bounded like the head, never relayed
            if size > self._max_header_bytes:
                self._fail(self._too_big("trailer section"))
                raise _Stop
            return
        headers = self.headers
        headers.append((name, value))
        if size > self._max_header_bytes:
            self._fail(self._too_big("response head"))
            raise _Stop
        if len(headers) > self._max_headers:
            self._fail(InvalidResponse(f"backend sent more than {self._max_headers} response headers"))
            raise _Stop

    def _too_big(self, what: str) -> InvalidResponse:
        # nginx says "upstream sent too big header"; the limit is the setting's.
        return InvalidResponse(f"backend sent too big a {what} (over {self._max_header_bytes} bytes)")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            self._fail(InvalidResponse(f"backend sent status {status}, outside 100-599"))
            raise _Stop
        if self._head_size + len(self.reason) > self._max_header_bytes:
            self._fail(self._too_big("response head"))
            raise _Stop
        if status < 200:
            return  # interim response (100 Continue, 103 Early Hints): wait for the final one
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        if self._transport is not None and self._transport.get_write_buffer_size():
            self.keep_alive = False  # an early answer: the backend has not read all the request
        self.phase = DONE if self.head_only else BODY
        self._head_size = 0  # trailers, if any, get a budget of their own
        _wake(self._waiter)

    def on_body(self, body: bytes) -> None:
        if self.phase is not BODY:
            return  # a 1xx response's payload is never relayed
        self._chunks.append(body)
        self._flow.added(len(body))
        _wake(self._waiter)

    def on_message_complete(self) -> None:
        if self.phase is BODY:
            self.phase = DONE
            _wake(self._waiter)

    # -- used by the transport and the response stream --------------------

    def _body_until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        _wake(self._waiter)

    def send(self, data: tuple[bytes, ...], *, head_only: bool) -> bool:
        """Write a request (its pieces in order); False when the backend provably received none of it.

        A connection already closing, or one whose first write failed at
        once, took nothing; after that, what the backend saw is unknown.
        """
        transport = self._transport
        if self.state is CLOSED or transport is None or transport.is_closing():
            self.close()
            return False
        if self.state is not NEW:
            # IDLE: the last response ended cleanly where its framing said, so
            # the parser stands at a message boundary and is used again.
            self._begin(head_only=head_only)
        else:
            self.head_only = head_only
        self.state = ACTIVE
        if len(data) == 1:
            transport.write(data[0])
        else:
            transport.writelines(data)
        if transport.is_closing() and self.error is None and self.phase is HEAD:
            self.close()  # the write failed before a byte left: the backend saw nothing
            return False
        return True

    async def read_head(self, timeout: float) -> None:
        while self.phase is HEAD:
            if self.error is not None:
                raise self.error
            await self._wait(timeout, "response headers")

    def take_chunk(self) -> bytes | None:
        """The next piece of body if one is here, b"" at its end, None when it must be awaited."""
        if self._chunks:
            chunk = self._chunks.popleft()
            self._flow.taken(len(chunk))
            return chunk
        if self.phase is DONE:
            return b""
        if self.error is not None:
            raise self.error
        return None

    @property
    def body_complete(self) -> bool:
        return self.phase is DONE and not self._chunks

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of body, or b"" at its end."""
        while (chunk := self.take_chunk()) is None:
            await self._wait(timeout, "body data")
        return chunk

    async def _wait(self, timeout: float, what: str) -> None:
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._deadline = deadline = loop.time() + timeout
        if self._deadline_timer is None or deadline < self._deadline_timer.when():
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_timer = loop.call_at(deadline, self._deadline_passed)
        try:
            await waiter
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout(f"backend sent no {what} within {timeout:g}s") from None
        finally:
            self._waiter = None

    def _deadline_passed(self) -> None:
        """The connection's read timer: it fires late or early, and re-arms for what is left.

        One timer per connection rather than one per wait: a wait only moves
        the deadline, and a busy connection's timer fires once a timeout
        period instead of being created and cancelled for every response.
        """
        self._deadline_timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self.state is CLOSED:
            return  # nothing waits: the next wait arms the timer again
        if self._loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._deadline_timer = self._loop.call_at(self._deadline, self._deadline_passed)

    def finish(self) -> bool:
        """The response is over for the caller; True when the connection may carry another."""
        if (
            self.state is ACTIVE
            and self.phase is DONE
            and self.keep_alive  # False after an early answer, too
            and not self.head_only
            and not self._chunks
        ):
            self.state = IDLE
            return True
        self.close()
        return False

    @property
    def usable(self) -> bool:
        transport = self._transport
        return self.state is IDLE and transport is not None and not transport.is_closing()

    def close(self) -> None:
        self.state = CLOSED
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        transport = self._transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()  # a backend that answered early may never read the rest
            else:
                transport.close()


def _closed_reason(when: str, exc: BaseException | None) -> str:
    reason = f"backend closed the connection {when}"
    return reason if exc is None else f"{reason}: {exc}"


class UpstreamReply:
    """A backend's response read from a pooled connection (:class:`app.forwarder.UpstreamResponse`)."""

    __slots__ = ("_conn", "_pool", "_read_timeout", "headers", "reason", "status")

    def __init__(self, pool: UpstreamTransport, conn: _Connection, read_timeout: float) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout
        self.status = conn.status
        self.reason = conn.reason
        self.headers = conn.headers

    @property
    def body_complete(self) -> bool:
        conn = self._conn
        return conn is None or conn.body_complete

    async def read_chunk(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        chunk = conn.take_chunk()  # the common case: already here, no wait
        return chunk if chunk is not None else await conn.read_chunk(self._read_timeout)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class _ResponseStream(httpx.AsyncByteStream):
    """A reply's body as an httpx stream, for callers of the httpx transport interface."""

    def __init__(self, reply: UpstreamReply) -> None:
        self._reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self._reply.read_chunk():
            yield chunk

    async def aclose(self) -> None:
        await self._reply.aclose()


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections to backends, reused most-recent first.

    With ``ssl_context``, connections use TLS, sending ``server_hostname``
    (default: the host connected to) as SNI and verifying the certificate
    against it -- a pod IP reached under its Service's name.
    """

    def __init__(
        self,
        *,
        max_idle_per_host: int = 256,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        self._max_idle = max_idle_per_host
        self._idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def forward(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: list[Header],
        body: bytes,
        timeouts: Timeouts,
    ) -> UpstreamReply:
        """Send one request and return its response once the head has arrived."""
        parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        if len(body) <= COALESCE_BODY_BYTES:
            parts.append(body)
            data: tuple[bytes, ...] = (b"".join(parts),)
        else:
            data = (b"".join(parts), body)
        conn = await self._send(origin, data, method == "HEAD", timeouts.connect)
        try:
            await conn.read_head(timeouts.read)
        except BaseException:
            conn.close()
            raise
        return UpstreamReply(self, conn, timeouts.read)

    async def _send(
        self, origin: Origin, data: tuple[bytes, ...], head_only: bool, connect_timeout: float
    ) -> _Connection:
        """Write the request on an idle connection, or on a new one when none took it."""
        conn = self._take_idle(origin)
        while conn is not None and not conn.send(data, head_only=head_only):
            conn = self._take_idle(origin)  # it was closing: nothing was sent, try the next
        if conn is None:
            conn = await self._connect(origin, connect_timeout)
            if not conn.send(data, head_only=head_only):
                # Accepted, then closed before a byte of the request left: as good as refused.
                where = f"{origin.host}:{origin.port}"
                raise httpx.ConnectError(f"{where} closed the connection before the request")
        return conn

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The httpx transport interface, over :meth:`forward`."""
        url = request.url
        origin = origin_of(url.scheme, url.host, url.port or (443 if self._ssl else 80))
        timeouts = request.extensions.get("timeout") or {}
        connect, read = timeouts.get("connect"), timeouts.get("read")
        target = request.extensions.get("target") or url.raw_path
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        reply = await self.forward(
            origin,
            request.method,
            target,
            request.headers.raw,
            body,
            Timeouts(connect or DEFAULT_CONNECT_TIMEOUT, read or DEFAULT_READ_TIMEOUT),
        )
        return httpx.Response(
            reply.status,
            headers=reply.headers,
            stream=_ResponseStream(reply),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reply.reason},
        )

    async def _connect(self, key: Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = key.host, key.port
        connecting = loop.create_task(
            loop.create_connection(
                lambda: _Connection(key, self._max_header_bytes, self._max_headers),
                host,
                port,
                ssl=self._ssl,
                server_hostname=(self._server_hostname or host) if self._ssl else None,
            )
        )
        done = loop.create_future()
        connecting.add_done_callback(lambda _: _wake(done))
        timer = expire_after(loop, done, timeout)
        try:
            await done
        except TimeoutError:
            connecting.cancel()
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g}s") from None
        except BaseException:
            connecting.cancel()
            raise
        finally:
            timer.cancel()
        try:
            _, conn = connecting.result()
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS with {host}:{port} failed: {exc}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        return conn

    def _take_idle(self, key: Origin) -> _Connection | None:
        stack = self._idle.get(key)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            if conn.usable and now - conn.idle_since < self._idle_timeout:
                return conn
            conn.close()
        return None

    def release(self, conn: _Connection) -> None:
        """Take back a connection whose response the caller is done with: pooled or closed."""
        if not conn.finish() or self._closed:
            conn.close()
            return
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        stack.append(conn)

    def idle_connections(self, host: str, port: int) -> int:
        return sum(c.usable for key, stack in self._idle.items() if key[:2] == (host, port) for c in stack)

    def forget(self, host: str, port: int) -> None:
        """Close the idle connections to a backend that left the pool."""
        for key in [key for key in self._idle if key[:2] == (host, port)]:
            for conn in self._idle.pop(key):
                conn.close()

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close()
        self._idle.clear()
