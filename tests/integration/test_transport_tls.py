"""The forwarding transport over TLS, against a loopback server with certificates made here.

The server certificate names a DNS name only, as a HyperbyteDB pod's names
its headless Service: connecting to the IP verifies only under that name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from app.transport import UpstreamTransport
from tests.unit.test_transport_loopback import Handler, fetch, keep_alive_server, request

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SERVICE_NAME = "hyperbytedb.test"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A CA and a server certificate for SERVICE_NAME (no IP address in it)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2",
            "-subj", "/CN=test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
            "-subj", f"/CN={SERVICE_NAME}")  # fmt: skip
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{SERVICE_NAME}\nextendedKeyUsage=serverAuth\n")
    ca, ca_key = str(d / "ca.pem"), str(d / "ca.key")
    openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", str(d / "server.pem"), "-days", "2", "-extfile", str(d / "ext.cnf"))  # fmt: skip
    yield d


def client_context(certificates: Path, *, trusted: bool = True) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates / "ca.pem") if trusted else None)


@contextlib.asynccontextmanager
async def serve_tls(certificates: Path, handler: Handler) -> AsyncIterator[tuple[str, int, list[int]]]:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificates / "server.pem", certificates / "server.key")
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield "127.0.0.1", port, connections
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_with_the_service_name_verifies_and_reuses_the_connection(certificates: Path) -> None:
    transport = UpstreamTransport(ssl_context=client_context(certificates), server_hostname=SERVICE_NAME)
    async with serve_tls(certificates, keep_alive_server()) as (host, port, connections):
        for _ in range(3):
            response, body = await fetch(transport, request(host, port))
            assert (response.status_code, body) == (200, b"ok")
        assert len(connections) == 1 and transport.idle_connections(host, port) == 1
    await transport.aclose()


@pytest.mark.parametrize(
    ("trusted", "server_hostname"),
    [
        (True, "other.test"),  # a name the certificate does not carry
        (True, None),  # the IP itself, which the certificate does not name
        (False, SERVICE_NAME),  # a CA the client does not trust
    ],
)
async def test_certificate_that_does_not_verify_is_a_connect_error_with_the_reason(
    certificates: Path, trusted: bool, server_hostname: str | None
) -> None:
    transport = UpstreamTransport(
        ssl_context=client_context(certificates, trusted=trusted), server_hostname=server_hostname
    )
    async with serve_tls(certificates, keep_alive_server()) as (host, port, _):
        with pytest.raises(httpx.ConnectError, match="certificate verify failed: "):
            await transport.handle_async_request(request(host, port))
    await transport.aclose()
