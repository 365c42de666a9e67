"""The forwarding transport over TLS: verified by the Service name, connections reused.

Only the constructor contract is used (``ssl_context``, ``server_hostname``,
``httpx.ConnectError`` with "certificate verify failed" on a bad certificate),
so these tests hold for any transport that keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.tls import listener_context
from app.transport import UpstreamTransport
from tests.integration.tls_support import TestCA, client_context

pytestmark = pytest.mark.anyio

NAME = "hyperbytedb-headless.db.test"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@contextlib.asynccontextmanager
async def tls_server(ctx: ssl.SSLContext) -> AsyncIterator[tuple[int, list[str | None]]]:
    """A keep-alive HTTPS server on 127.0.0.1 answering 204; yields its port and each handshake's SNI."""
    server_names: list[str | None] = []
    ctx.sni_callback = lambda _ssl_object, name, _ctx: server_names.append(name)  # type: ignore[assignment,func-returns-value]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1], server_names
    finally:
        server.close()
        await server.wait_closed()


def request(port: int) -> httpx.Request:
    timeouts = {"connect": 2.0, "read": 2.0}
    return httpx.Request(
        "GET", f"https://127.0.0.1:{port}/", extensions={"timeout": timeouts, "target": b"/ping"}
    )


async def test_tls_connections_are_verified_by_name_and_reused(ca: TestCA) -> None:
    pair = ca.issue("backend", NAME)
    async with tls_server(listener_context(str(pair.cert), str(pair.key))) as (port, server_names):
        transport = UpstreamTransport(ssl_context=client_context(ca.cert), server_hostname=NAME)
        try:
            for _ in range(5):
                response = await transport.handle_async_request(request(port))
                await response.aread()
                assert response.status_code == 204
        finally:
            await transport.aclose()
    assert server_names == [NAME]  # one handshake for five requests, SNI = the Service name


@pytest.mark.parametrize("mistake", ["wrong_name", "wrong_ca"])
async def test_a_certificate_that_does_not_verify_is_a_connect_error(
    ca: TestCA, tmp_path: Path, mistake: str
) -> None:
    pair = ca.issue("backend", NAME)
    trusted = ca.cert if mistake == "wrong_name" else TestCA(tmp_path / "other").cert
    name = "someone-else.test" if mistake == "wrong_name" else NAME
    async with tls_server(listener_context(str(pair.cert), str(pair.key))) as (port, _):
        transport = UpstreamTransport(ssl_context=client_context(trusted), server_hostname=name)
        try:
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                await transport.handle_async_request(request(port))
        finally:
            await transport.aclose()
