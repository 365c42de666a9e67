"""How the proxy reaches a backend: one request out, one streamed response back.

The proxy relays bytes it already has -- a method, the exact target, headers
as lists of byte pairs, a body -- and gets back a status, headers and body
chunks.  httpx's ``Request`` and ``Response`` models would rebuild all of that
(URL, header objects, streams) on every request, at about a quarter of a
proxied request's CPU.  So the forward goes through this smaller contract:

- :class:`app.transport.UpstreamTransport` implements :class:`Forwarder`
  directly, writing the request bytes to a pooled connection;
- :class:`HttpxForwarder` adapts any httpx transport (``httpx.MockTransport``
  and respx in tests, httpcore's pool in the benchmark's comparison row).

Failures are httpx's own exception types either way, so the proxy classifies
them the same whichever forwarder it was given.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import NamedTuple, Protocol

import httpx

Header = tuple[bytes, bytes]


class Origin(NamedTuple):
    """Where a backend is reached; built once per backend, used as a pool key."""

    host: str  # IP literal (or name), without brackets
    port: int
    url: str  # scheme://host:port, IPv6 in brackets


def origin_of(scheme: str, host: str, port: int) -> Origin:
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:
        bracketed = False
    return Origin(host, port, f"{scheme}://{f'[{host}]' if bracketed else host}:{port}")


class Timeouts(NamedTuple):
    """Seconds to wait for a connection, and for each piece of the response."""

    connect: float
    read: float


class UpstreamResponse(Protocol):
    """A backend's response, head received, body still streaming."""

    status: int
    headers: list[Header]  # as the backend sent them, in order

    @property
    def body_complete(self) -> bool:
        """No body bytes remain to be read: the next ``read_chunk`` would return b""."""
        ...

    async def read_chunk(self) -> bytes:
        """The next piece of the body, or b"" at its end; httpx's errors on failure."""
        ...

    async def aclose(self) -> None:
        """Done with the response: its connection goes back to the pool or is closed."""
        ...


class Forwarder(Protocol):
    """Sends one request to one backend; never retries a request it may have sent."""

    async def forward(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: list[Header],
        body: bytes,
        timeouts: Timeouts,
    ) -> UpstreamResponse: ...

    def forget(self, host: str, port: int) -> None:
        """The backend left the pool: drop whatever is kept for it."""
        ...

    async def aclose(self) -> None: ...


class HttpxForwarder:
    """A :class:`Forwarder` over any httpx transport.

    The request goes out as httpx sends it (the origin as URL, the exact
    target in the ``target`` extension, which httpcore honours); the response
    is read through its stream.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport
        self._url = functools.lru_cache(maxsize=4096)(httpx.URL)

    async def forward(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: list[Header],
        body: bytes,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        request = httpx.Request(
            method,
            self._url(origin.url),
            headers=headers,
            content=body,
            extensions={
                "timeout": {
                    "connect": timeouts.connect,
                    "read": timeouts.read,
                    "write": timeouts.read,
                    "pool": timeouts.read,
                },
                "target": target,
            },
        )
        return _HttpxResponse(await self._transport.handle_async_request(request))

    def forget(self, host: str, port: int) -> None:
        """httpx transports manage their own connections."""

    async def aclose(self) -> None:
        await self._transport.aclose()


class _HttpxResponse:
    __slots__ = ("_chunks", "_response", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers.raw
        self._chunks = aiter(response.stream)  # type: ignore[arg-type]  # an async transport's stream

    @property
    def body_complete(self) -> bool:
        return False  # a stream tells its end only when asked for more

    async def read_chunk(self) -> bytes:
        async for chunk in self._chunks:
            if chunk:
                return chunk
        return b""

    async def aclose(self) -> None:
        await self._response.aclose()
