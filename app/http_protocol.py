"""uvicorn's httptools protocol, bounded on the client side.

uvicorn's HTTP/1.1 protocol trusts its clients: a request head may grow
without limit, and a client may stay silent for as long as it likes before
its head, between body bytes, or while its response waits to be read.  This
subclass adds nginx's client-side limits and otherwise behaves exactly as
uvicorn does:

- head size and header count (nginx: ``large_client_header_buffers``):
  ``431`` and the connection closed;
- time to receive a whole head (``client_header_timeout``): ``408`` when part
  of a head arrived, a plain close for a connection that never said a word;
- time between two body reads (``client_body_timeout``): ``408`` while no
  answer was started, else a close;
- time between two writes the client lets through (``send_timeout``): a close;
- an upgrade offer (``Upgrade: h2c`` from ``curl --http2``) is declined
  and the request served as HTTP/1.1 with its whole body, as nginx does
  (llhttp ends such a request at its head; uvicorn then lost the body and
  forwarded an empty one); a chunked one gets ``400``;
- a body cut short by the client's half-close: ``400``, never forwarded;
- bytes that do not parse after a complete request: uvicorn's ``400``, but
  after the response in progress instead of in the middle of it.

Two changes make a response cheaper without changing what the client gets:
a response head is held until the first body write, so a small response
leaves in one write (one system call and one TCP segment rather than two);
and the application is woken once per 64 KiB of request body, not per read.

Timers are lazy: a deadline moves by updating a timestamp, and the timer
that fires early re-arms itself for what is left, so a busy connection does
not create and cancel one per chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.settings import Settings

log = logging.getLogger("hyperbytedb_proxy.client")

HEADER_OVERHEAD = 4  # ": " and CRLF around each header line
# After an error answer, keep reading (and discarding) this long before the
# close, so the client's unread request bytes do not turn the close into a
# reset that destroys the answer (nginx: lingering_close, lingering_timeout).
LINGER_SECS = 2.0
CONTINUE = b"HTTP/1.1 100 "  # the interim answer uvicorn writes before the head, unheld


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one client connection may cost the proxy."""

    max_head_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    send_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientLimits:
        return cls(
            max_head_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout=settings.client_header_timeout_secs,
            body_timeout=settings.client_body_timeout_secs,
            send_timeout=settings.send_timeout_secs,
        )


OnViolation = Callable[[str], None]


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing; the reason is on the protocol."""


@dataclass(frozen=True, slots=True)
class _Rejection:
    limit: str
    status: int
    message: str


# Broken by a request's head, which may sit behind a response still in progress.
_HEAD_LIMITS = frozenset({"head_size", "header_count", "header_timeout", "upgrade_body"})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with head limits and client timeouts; see the module docstring."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ClientLimits,
        on_violation: OnViolation,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._on_violation = on_violation
        self._rejection: _Rejection | None = None
        # Head: bytes and headers of the head being received, and when it began.
        self._in_head = True
        self._head_started: float | None = None
        self._head_bytes = 0  # complete header lines, as the parser reported them
        self._head_received = 0  # bytes received while a head was incomplete
        self._header_count = 0
        self._header_timer: asyncio.TimerHandle | None = None
        # Body: when its last bytes arrived.
        self._in_body = False
        self._body_at = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._declined_body = 0  # body bytes still due on a request whose upgrade offer was declined

    # -- connection ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is held to the header timeout too.
        self._head_started = self.loop.time()
        self._header_timer = self.loop.call_later(self._limits.header_timeout, self._header_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer, self._send_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._send_timer = self._linger_timer = None

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._rejection is not None:
            return  # answered and closing: nothing more is read
        if self._declined_body:
            self._read_declined_body(data)
            self._body_progress()
            return
        if self._in_head:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self._limits.header_timeout, self._header_deadline)
            self._head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._should_upgrade():
                self.handle_websocket_upgrade()  # as uvicorn
                return
            # Any other offer is declined, as nginx does: the request is served
            # as HTTP/1.1, with the body llhttp left unparsed read here.
            rest = data[exc.args[0] :]
            if self._declined_body:
                self._read_declined_body(rest)
            elif rest:
                self.data_received(rest)
            self._body_progress()
            return
        except httptools.HttpParserError:
            if self._rejection is not None:
                self._reject(self._rejection)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            if not self._in_body and self.cycle is not None and not self.cycle.response_complete:
                # Bytes after a complete request (a body longer than its
                # Content-Length, a smuggled request) are the next request:
                # answer that one after the response in progress, not in it.
                self._rejection = _Rejection("invalid", 400, msg)
                self.flow.pause_reading()
                return
            self.send_400_response(msg)
            return
        if self._in_head and max(self._head_bytes, self._head_received) > self._limits.max_head_bytes:
            self._reject(_Rejection("head_size", 431, self._head_too_large()))
        else:
            self._body_progress()

    def _body_progress(self) -> None:
        """Body bytes were read (or the body began): the body timeout counts from now."""
        if self._in_body and self._rejection is None:
            self._body_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self._limits.body_timeout, self._body_deadline)

    def _read_declined_body(self, data: bytes) -> None:
        """Body bytes of a request whose upgrade offer was declined; the rest goes to the parser."""
        body = data[: self._declined_body]
        self._declined_body -= len(body)
        if body:
            self.on_body(body)
        if not self._declined_body:
            self.on_message_complete()
            rest = data[len(body) :]
            if rest:
                self.data_received(rest)

    # -- parser callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_started is None:  # a new connection's clock started when it opened
            self._head_started = self.loop.time()
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_bytes += len(name) + len(value) + HEADER_OVERHEAD
        if self._header_count > self._limits.max_headers:
            self._stop(
                _Rejection("header_count", 431, f"more than {self._limits.max_headers} request headers")
            )
        if self._head_bytes > self._limits.max_head_bytes:
            self._stop(_Rejection("head_size", 431, self._head_too_large()))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_bytes + len(self.url) > self._limits.max_head_bytes:
            self._stop(_Rejection("head_size", 431, self._head_too_large()))
        self._in_head = False
        self._head_started = None
        self._head_received = self._head_bytes = 0
        if self.parser.should_upgrade() and not self._should_upgrade():
            # An offer the proxy declines (h2c from `curl --http2`). llhttp ends
            # such a request at its head, so its body is read by hand after it.
            length = _declared_body(self.headers)
            if length is None:
                self._stop(
                    _Rejection(
                        "upgrade_body",
                        400,
                        "a chunked request offering a protocol upgrade is not supported; "
                        "send it without the Upgrade header",
                    )
                )
            self._declined_body = length
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            cycle.transport = HeadHoldingTransport(self.transport, self.loop)
        self._in_body = True

    def on_body(self, body: bytes) -> None:
        """As uvicorn's, but the application is woken per ``HIGH_WATER_LIMIT`` of body or at its end.

        uvicorn wakes the application for every piece of body a read
        returns; the proxy buffers the whole body anyway, so a 64 KiB write
        arriving in two reads cost it a task switch, a receive() and a copy
        more.  The wake-up comes when reading pauses (the buffer is full,
        exactly when uvicorn would pause too) or when the message is
        complete (``on_message_complete``); a disconnect wakes it as before.
        """
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
            cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self._declined_body:
            return  # llhttp's early end of an upgrade request: the body is still to come
        self._in_body = False
        self._in_head = True
        super().on_message_complete()

    # asyncio.Protocol's eof_received returns bool | None; uvicorn annotates its no-op as None.
    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client half-closed: a body cut short of its Content-Length gets 400, not a forward."""
        cycle = self.cycle
        queued = bool(self.pipeline)  # its answer would cut into an earlier response
        if (
            self._in_body
            and cycle is not None
            and not cycle.response_started
            and not queued
            and not self._rejection
        ):
            self._reject(_Rejection("incomplete_body", 400, "request body ended before its declared length"))
            return True  # keep the connection open for the answer; _reject closes it
        return None

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, HeadHoldingTransport):
            cycle.transport.flush()  # a HEAD response has no body write to carry its head
        rejection = self._rejection
        if (
            rejection is not None
            and rejection.limit == "invalid"
            and not self.pipeline
            and not self.transport.is_closing()
        ):
            self.send_400_response(rejection.message)
            return
        super().on_response_complete()
        pending_head = self._in_head and (self._head_received or self._head_bytes)
        if pending_head and self._header_timer is None and not self.transport.is_closing():
            # Part of a pipelined head waited behind this response: its clock starts now.
            self._head_started = self.loop.time()
            self._header_timer = self.loop.call_later(self._limits.header_timeout, self._header_deadline)

    # -- writing ---------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self._limits.send_timeout, self._send_deadline)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- deadlines -------------------------------------------------------

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self._in_head or self._head_started is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined head waits for this response; its clock restarts after it
        left = self._head_started + self._limits.header_timeout - self.loop.time()
        if left > 0:
            self._header_timer = self.loop.call_later(left, self._header_deadline)
            return
        if self._head_received or self._head_bytes:
            self._reject(_Rejection("header_timeout", 408, "the request head did not arrive in time"))
        else:
            self._violated("header_timeout", "no request arrived in time; closing the connection")
            self.transport.close()

    def _body_deadline(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self.pipeline:
            self._body_at = now  # the proxy stopped reading, not the client
        left = self._body_at + self._limits.body_timeout - now
        if left > 0:
            self._body_timer = self.loop.call_later(left, self._body_deadline)
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._violated("body_timeout", "request body stalled; closing the connection")
            self.transport.close()
            return
        self._reject(_Rejection("body_timeout", 408, "the request body did not arrive in time"))

    def _send_deadline(self) -> None:
        self._send_timer = None
        if self.transport.is_closing():
            return
        self._violated("send_timeout", "client did not read its response in time; closing the connection")
        self.transport.abort()  # close() would wait for the unread bytes forever

    # -- answers ---------------------------------------------------------

    def _stop(self, rejection: _Rejection) -> NoReturn:
        """From inside a parser callback: stop parsing; data_received answers."""
        self._rejection = rejection
        raise _Rejected(rejection.limit)

    def _reject(self, rejection: _Rejection) -> None:
        """Answer the client with a JSON error, close, and free whatever the request held."""
        self._rejection = rejection
        self._in_head = self._in_body = False
        self._violated(rejection.limit, rejection.message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if rejection.limit in _HEAD_LIMITS:
                # A pipelined head behind a response in progress: let that
                # response finish, then close; the bad request gets no answer.
                cycle.keep_alive = False
                return
            if cycle.response_started:
                self.transport.close()
                return
            # The application is still waiting for the body: it sees a
            # disconnect and lets go of what it reserved.
            cycle.disconnected = True
            cycle.message_event.set()
        body = json.dumps({"error": rejection.message}).encode()
        head = [STATUS_LINE[rejection.status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self._linger_close()

    def _linger_close(self) -> None:
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # the answer, then FIN; whatever still arrives is dropped
        self._cancel_timers()
        self._linger_timer = self.loop.call_later(LINGER_SECS, transport.close)

    def _violated(self, limit: str, message: str) -> None:
        self._on_violation(limit)
        client = self.client[0] if self.client else None
        log.warning(message, extra={"fields": {"limit": limit, "client": client}})

    def _head_too_large(self) -> str:
        return f"request head larger than {self._limits.max_head_bytes} bytes"


class HeadHoldingTransport(asyncio.Transport):
    """What one response cycle writes through: its head waits for the first body write.

    uvicorn writes a response head and its body in two calls, and each is a
    system call and a TCP segment of its own; a proxied answer of a few
    hundred bytes paid a second write for nothing.  The head is held until
    the next write, which sends both in one ``writelines``, or until the
    cycle ends or closes, or at the latest the next turn of the event loop
    (a streamed response whose first chunk is slow).  Everything else goes
    straight to the connection's transport.
    """

    __slots__ = ("_head", "_head_seen", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if data:
                self._transport.writelines((head, data))
            else:
                self._transport.write(head)
            return
        if not self._head_seen:
            head = bytes(data)
            if not head.startswith(CONTINUE):
                # The first write other than "100 Continue" is the head: uvicorn writes nothing before it.
                self._head_seen = True
                self._head = head
                self._loop.call_soon(self.flush)
                return
        self._transport.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._head or b"")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def _declared_body(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of a request llhttp has validated; None for a chunked one."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)
    return length


def limited_protocol(limits: ClientLimits, on_violation: OnViolation) -> Callable[..., asyncio.Protocol]:
    """The ``http`` argument of uvicorn.Config: builds one bounded protocol per connection."""

    def create(
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> LimitedHttpToolsProtocol:
        return LimitedHttpToolsProtocol(
            config, server_state, app_state, _loop, limits=limits, on_violation=on_violation
        )

    return create
