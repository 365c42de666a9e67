"""Hostile backends: raw bytes on loopback behind a real proxy process.

Each case scripts what a broken or malicious backend sends and checks what
the client sees, what reached the backends (how many times), and that the
proxy still serves afterwards.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sim.processes import ProxyProcess, free_port_on_all
from tests.hostile.raw_backend import Exchange, RawBackend, Script, answer

pytestmark = pytest.mark.integration

BACKEND_IPS = ("127.0.0.2", "127.0.0.3")
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
CLIENT_TIMEOUT = 20.0

Cluster = Callable[..., tuple[ProxyProcess, list[RawBackend]]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Start raw backends (one script each, or one for all) and a proxy in front of them."""
    with contextlib.ExitStack() as stack:

        def start(
            *scripts: Script, backends: int = 1, **settings: str
        ) -> tuple[ProxyProcess, list[RawBackend]]:
            ips = BACKEND_IPS[:backends]
            port = free_port_on_all(ips)
            chosen = scripts if len(scripts) == backends else scripts * backends
            pairs = zip(ips, chosen, strict=True)
            raw = [stack.enter_context(RawBackend(ip, port, script)) for ip, script in pairs]
            env = {
                "HYPERBYTEDB_PROXY_BACKEND_SERVICE": ",".join(ips),
                "HYPERBYTEDB_PROXY_BACKEND_PORT": str(port),
                "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.2",
                "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "0.3",
                "HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": "5",
                "HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS": "5",
                "HYPERBYTEDB_PROXY_PUBLIC_PATHS": "*",  # the scripted backends answer paths of their own
                "LOG_FORMAT": "json",
                **{f"HYPERBYTEDB_PROXY_{k.upper()}": v for k, v in settings.items()},
            }
            proxy = stack.enter_context(ProxyProcess(env, log_dir=tmp_path))
            proxy.wait_ready(timeout=15)
            return proxy, raw

        yield start


def get(proxy: ProxyProcess, path: str = "/query?q=x", **kw: object) -> httpx.Response:
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        return client.get(proxy.url + path, **kw)  # type: ignore[arg-type]


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def assert_still_serving(proxy: ProxyProcess) -> None:
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        assert client.get(proxy.url + "/healthz").status_code == 200
    assert "Traceback" not in proxy.log_text()


def by_target(responses: dict[bytes, bytes]) -> Script:
    """Answer by request path; anything else gets OK."""

    def script(exchange: Exchange) -> bool:
        exchange.read_body()
        path = exchange.arrival.target.split(b"?")[0]
        exchange.send(responses.get(path, OK))
        return True

    return script


def raw_requests(proxy: ProxyProcess, *requests: bytes) -> list[bytes]:
    """Send requests one by one on one client connection; each answer's head and body."""
    answers = []
    with socket.create_connection((proxy.host, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        for request in requests:
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {answers!r}"
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(body) < length:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed mid-body after {answers!r}"
                body += chunk
            answers.append(head + b"\r\n\r\n" + body)
    return answers


# -- already handled: keep it so -------------------------------------------


def test_plain_and_chunked_answers_pass_through(cluster: Cluster) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    proxy, [backend] = cluster(by_target({b"/chunked": chunked}))
    assert get(proxy).json() == {"ok": True}
    assert get(proxy, "/chunked").content == b"hello world"
    assert len(backend.arrivals) == 2 and backend.forward_connections == 1  # one kept-alive connection


def test_garbage_instead_of_a_response_is_a_502_not_retried(cluster: Cluster) -> None:
    proxy, backends = cluster(answer(b"SMTP ready\r\n\r\n"), backends=2)
    assert_error(get(proxy), 502, "invalid response")
    assert sum(len(b.arrivals) for b in backends) == 1
    assert_still_serving(proxy)


def test_pipelined_client_requests_each_get_their_own_answer(cluster: Cluster) -> None:
    proxy, _ = cluster(by_target({b"/b": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"}))
    with socket.create_connection((proxy.host, proxy.port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: p\r\n\r\nGET /b HTTP/1.1\r\nHost: p\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"b"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.index(b'{"ok":true}') < data.rindex(b"\r\n\r\nb")


# -- limits on the response head -------------------------------------------


def test_response_head_over_the_byte_limit_is_a_502(cluster: Cluster) -> None:
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n"
    proxy, backends = cluster(by_target({b"/big": huge}), backends=2)
    assert_error(get(proxy, "/big"), 502, "too big a response head")
    assert sum(len(b.requests_to(b"/big")) for b in backends) == 1
    assert get(proxy).status_code == 200
    assert_still_serving(proxy)


def test_response_head_limit_is_a_setting(cluster: Cluster) -> None:
    medium = b"HTTP/1.1 200 OK\r\nX-Mid: " + b"x" * 3000 + b"\r\nContent-Length: 0\r\n\r\n"
    proxy, _ = cluster(answer(medium), backend_max_header_bytes="2048")
    assert_error(get(proxy), 502, "over 2048 bytes")


def test_too_many_response_headers_is_a_502(cluster: Cluster) -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(150))
    many = b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n"
    proxy, backends = cluster(by_target({b"/many": many}), backends=2)
    assert_error(get(proxy, "/many"), 502, "more than 100 response headers")
    assert sum(len(b.requests_to(b"/many")) for b in backends) == 1
    assert_still_serving(proxy)


# -- the response ends where its framing says --------------------------------


def test_bytes_after_a_response_never_reach_the_client(cluster: Cluster) -> None:
    smuggling = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
        b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\nContent-Length: 8\r\n\r\nsmuggled"
    )
    proxy, [backend] = cluster(by_target({b"/first": smuggling}))
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        first = client.get(proxy.url + "/first")
        second = client.get(proxy.url + "/second")
    assert (first.content, second.content) == (b"first", b'{"ok":true}')
    assert "x-smuggled" not in first.headers and "x-smuggled" not in second.headers
    assert backend.forward_connections == 2  # the smuggling connection was closed, not reused
    assert_still_serving(proxy)


def test_trailers_are_dropped(cluster: Cluster) -> None:
    with_trailers = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n"
        b"2\r\nok\r\n0\r\nSet-Cookie: session=stolen\r\n\r\n"
    )
    proxy, _ = cluster(answer(with_trailers))
    [answer_bytes] = raw_requests(proxy, b"GET /q HTTP/1.1\r\nHost: p\r\n\r\n")
    assert b"stolen" not in answer_bytes.lower() and b"set-cookie" not in answer_bytes.lower()
    assert get(proxy).content == b"ok"


def test_interim_responses_are_skipped_and_their_bodies_never_relayed(cluster: Cluster) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK
    with_body = b"HTTP/1.1 100 Continue\r\nContent-Length: 9\r\n\r\nsmuggled!" + OK
    proxy, backends = cluster(by_target({b"/interim": interim, b"/body": with_body}), backends=2)
    response = get(proxy, "/interim")
    assert response.status_code == 200 and "link" not in response.headers
    bad = get(proxy, "/body")
    assert_error(bad, 502, "invalid response")
    assert b"smuggled" not in bad.content
    assert sum(len(b.requests_to(b"/body")) for b in backends) == 1


@pytest.mark.parametrize("status", [b"600", b"099", b"1000"])
def test_status_outside_100_to_599_is_a_502(cluster: Cluster, status: bytes) -> None:
    proxy, _ = cluster(answer(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n"))
    assert_error(get(proxy), 502, "invalid response")
    assert_still_serving(proxy)


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_with_a_length_keeps_the_client_connection(cluster: Cluster, status: int) -> None:
    bodiless = b"HTTP/1.1 %d X\r\nContent-Length: 5\r\nX-Id: 1\r\n\r\n" % status
    proxy, [backend] = cluster(by_target({b"/bodiless": bodiless}))
    first, second = raw_requests(
        proxy,
        b"GET /bodiless HTTP/1.1\r\nHost: p\r\n\r\n",
        b"GET /after HTTP/1.1\r\nHost: p\r\n\r\n",
    )
    assert first.startswith(b"HTTP/1.1 %d " % status) and b"x-id: 1" in first.lower()
    assert first.endswith(b"\r\n\r\n")  # no body bytes
    assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b'{"ok":true}')
    assert backend.forward_connections == 1  # the backend connection was kept too
    assert_still_serving(proxy)


def test_reset_in_a_close_delimited_body_is_not_a_clean_end(cluster: Cluster) -> None:
    def reset_midway(exchange: Exchange) -> bool:
        exchange.read_body()
        exchange.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial body")
        time.sleep(0.5)  # the proxy relays the status and the first bytes
        exchange.reset()
        return False

    proxy, _ = cluster(reset_midway)
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client, pytest.raises(httpx.TransportError):
        client.get(proxy.url + "/query?q=x").read()
    assert_still_serving(proxy)


# -- no hidden re-sends ------------------------------------------------------


def second_request_swallowed(exchange: Exchange) -> bool:
    """The first request on a connection is answered; any later one is read and dropped."""
    exchange.read_body()
    if exchange.arrival.index == 0:
        exchange.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        return True
    return False


def test_a_write_lost_after_it_was_read_is_not_resent_by_the_transport(cluster: Cluster) -> None:
    proxy, backends = cluster(second_request_swallowed, backends=2, max_retries="0")
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        for n in range(2):  # one kept-alive connection to each backend
            assert client.post(proxy.url + f"/write?db=warm{n}", content=b"m v=1").status_code == 204
        response = client.post(proxy.url + "/write?db=target", content=b"m v=2")
    assert response.status_code in (502, 503), response.text
    arrivals = [a for b in backends for a in b.requests_to(b"/write?db=target")]
    assert len(arrivals) == 1  # MAX_RETRIES=0: exactly once, never silently again


def test_writes_lost_after_they_were_read_arrive_at_most_1_plus_max_retries_times(cluster: Cluster) -> None:
    def always_swallow(exchange: Exchange) -> bool:
        exchange.read_body()
        return False

    proxy, backends = cluster(always_swallow, backends=2, max_retries="2")
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        response = client.post(proxy.url + "/write?db=target", content=b"m v=1")
    assert response.status_code in (502, 503), response.text
    arrivals = [a for b in backends for a in b.requests_to(b"/write?db=target")]
    assert 1 <= len(arrivals) <= 3
    assert_still_serving(proxy)


# -- early answers -----------------------------------------------------------


def test_early_answer_is_relayed_before_the_body_is_read(cluster: Cluster) -> None:
    def refuse_unread(exchange: Exchange) -> bool:
        if exchange.arrival.target.startswith(b"/write"):
            exchange.send(b'HTTP/1.1 401 Unauthorized\r\nContent-Length: 16\r\n\r\n{"error":"auth"}')
            time.sleep(2)  # never read the body; the proxy must not wait for that to answer
            return False
        exchange.read_body()
        exchange.send(OK)
        return True

    # The request timeout is far beyond the client's: only a prompt relay passes.
    proxy, [backend] = cluster(refuse_unread, request_timeout_secs="120")
    body = b"m v=1 " + b"x" * (20 * 1024 * 1024)
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        response = client.post(proxy.url + "/write?db=big", content=body)
        assert (response.status_code, response.json()) == (401, {"error": "auth"})
        assert client.get(proxy.url + "/query?q=after").status_code == 200
    assert backend.forward_connections == 2  # the early-answered connection was not reused
    assert_still_serving(proxy)
