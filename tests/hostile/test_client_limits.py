"""Client-side limits against a real proxy process: head size and count, timeouts, memory.

Every case drives raw sockets on loopback and checks what the client got,
what reached the node, the violation metric and the proxy's memory.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.hostile.client_stack import SHORT_TIMEOUTS, Stack, client_stack
from tests.hostile.raw_client import RawClient, connection, open_fds, request
from tests.integration.memory import peak_rss, rss_mib

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
DECLARED = 25 * MIB  # HyperbyteDB's largest body


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A buffered-bytes cap two declared bodies would exhaust if declarations were reserved.
    limits = {"max_buffered_bytes": str(2 * DECLARED), "keepalive_timeout_secs": "4", **SHORT_TIMEOUTS}
    with client_stack(tmp_path_factory.mktemp("limits"), **limits) as s:
        yield s


def _write(stack: Stack, line: bytes) -> int:
    response = httpx.post(f"{stack.proxy.url}/write?db=hostile", content=line, timeout=10, trust_env=False)
    return response.status_code


def _buffered_bytes(stack: Stack) -> float:
    text = httpx.get(f"{stack.proxy.url}/metrics", timeout=5, trust_env=False).text
    line = next(
        line for line in text.splitlines() if line.startswith("hyperbytedb_proxy_buffered_request_bytes ")
    )
    return float(line.split()[-1])


# -- head size and header count ---------------------------------------------


def test_oversized_head_gets_431(stack: Stack) -> None:
    before = stack.violations("head_size")
    with connection(stack.host, stack.port) as client:
        client.send(b"GET /ping HTTP/1.1\r\nHost: proxy\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
        response = client.read_response()
        assert response is not None and response.status == 431
        assert "65536" in response.body.decode()
        assert client.closed_within(5)
    assert stack.violations("head_size") == before + 1


def test_twenty_megabytes_of_header_lines_are_cut_at_the_limit(stack: Stack) -> None:
    line = b"X-Filler: " + b"f" * 1000 + b"\r\n"
    chunk = line * 64  # ~64 KiB per send
    sent = 0
    response = None
    with peak_rss(stack.proxy.pid) as rss, connection(stack.host, stack.port) as client:
        client.send(b"POST /write?db=hostile HTTP/1.1\r\nHost: proxy\r\n")
        for _ in range(20 * MIB // len(chunk)):
            if not client.send(chunk):
                break
            sent += len(chunk)
            readable, _, _ = select.select([client.sock], [], [], 0)
            if readable:
                break
        response = client.read_response()
    assert response is not None and response.status == 431
    # Answered long before the 20 MB were sent (what was sent meanwhile sat in socket buffers).
    assert sent < 16 * MIB, sent
    assert rss.growth < 32, f"RSS grew {rss.growth:.1f} MiB"


def test_fifty_clients_with_a_one_mebibyte_head_each_keep_memory_bounded(stack: Stack) -> None:
    head = b"X-Filler: " + b"h" * 4000 + b"\r\n"
    statuses: list[int | None] = []
    lock = threading.Lock()

    def hostile() -> None:
        with connection(stack.host, stack.port, timeout=20) as client:
            client.send(b"GET /query?q=x HTTP/1.1\r\nHost: proxy\r\n")
            client.send_until_refused(head * 16, MIB)
            response = client.read_response(timeout=20)
        with lock:
            statuses.append(response.status if response else None)

    baseline = rss_mib(stack.proxy.pid)
    with peak_rss(stack.proxy.pid) as rss:
        threads = [threading.Thread(target=hostile) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert rss.growth < 32, f"RSS grew from {baseline:.1f} to {rss.peak:.1f} MiB"
    # Clients read their 431; on a loaded machine one whose bytes outlast the linger may see a reset.
    assert statuses.count(431) >= 25, statuses
    assert _write(stack, b"m v=1") == 204  # and the proxy still serves


def test_too_many_headers_get_431_and_the_limit_itself_passes(stack: Stack) -> None:
    before = stack.violations("header_count")
    with connection(stack.host, stack.port) as client:
        headers = [(f"X-H{i}", "v") for i in range(99)]  # Host is the hundredth
        client.send(request("GET", "/ping", headers))
        response = client.read_response()
        assert response is not None and response.status == 204
        client.send(request("GET", "/ping", [*headers, ("X-One-Too-Many", "v")]))
        response = client.read_response()
        assert response is not None and response.status == 431
        assert client.closed_within(5)
    assert stack.violations("header_count") == before + 1


# -- timeouts -----------------------------------------------------------------


def test_slowloris_head_gets_408_after_the_header_timeout(stack: Stack) -> None:
    before = stack.violations("header_timeout")
    with connection(stack.host, stack.port) as client:
        started = time.monotonic()
        client.send(b"GET /ping HTTP/1.1\r\nHost: proxy\r\n")
        # A byte now and then does not restart the clock: the whole head has a deadline.
        for _ in range(20):
            if not client.send(b"X"):
                break
            readable, _, _ = select.select([client.sock], [], [], 0.25)
            if readable:
                break
        response = client.read_response()
        elapsed = time.monotonic() - started
        assert response is not None and response.status == 408
        assert client.closed_within(5)
    assert elapsed < 4.5, elapsed  # 1 s timeout: the trickle did not keep it alive for its 5 s
    assert stack.violations("header_timeout") == before + 1


def test_silent_connection_is_closed_after_the_header_timeout(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        assert client.closed_within(10)
        assert client.read_response(timeout=0.1) is None  # closed without an answer


def test_idle_keep_alive_connection_outlives_the_header_timeout_then_closes(stack: Stack) -> None:
    """Between requests the keep-alive timeout (4 s here) applies, not the header timeout (1 s)."""
    with connection(stack.host, stack.port) as client:
        client.send(request("GET", "/ping"))
        first = client.read_response()
        time.sleep(2)
        client.send(request("GET", "/ping"))
        second = client.read_response()
        assert first is not None and second is not None and (first.status, second.status) == (204, 204)
        assert client.closed_within(15)
        assert client.read_response(timeout=0.1) is None  # closed quietly, no 408


def test_pipelined_slow_head_behind_a_response_still_times_out(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(request("GET", "/ping") + b"GET /ping HTTP/1.1\r\nHost: proxy\r\nX-Half: ")
        first = client.read_response()
        second = client.read_response()
    assert first is not None and first.status == 204
    assert second is not None and second.status == 408


def test_body_that_never_arrives_times_out_and_holds_nothing(stack: Stack) -> None:
    """Ten uploads that declare 25 MiB and trickle nothing: other writes go through meanwhile."""
    stack.reset_node()
    before = stack.violations("body_timeout")
    head = request("POST", "/write?db=idle", [("Content-Length", str(DECLARED))])
    idle = [RawClient(stack.host, stack.port) for _ in range(10)]
    try:
        for client in idle:
            client.send(head + b"m")
        # Under the old rule the cap (2 x 25 MiB) was gone after two such clients.
        statuses = [_write(stack, f"m v={i}".encode()) for i in range(5)]
        assert statuses == [204] * 5
        assert _buffered_bytes(stack) <= 10  # the idle clients hold one byte each, not 25 MiB
        answers = [client.read_response() for client in idle]
        assert [answer.status if answer else None for answer in answers] == [408] * 10
    finally:
        for client in idle:
            client.close()
    assert stack.violations("body_timeout") == before + 10
    assert stack.node_requests().get("/write") == 5  # none of the idle uploads was forwarded
    assert _buffered_bytes(stack) == 0


def test_client_that_never_reads_its_response_is_disconnected(stack: Stack) -> None:
    before = stack.violations("send_timeout")
    total = 64 * MIB
    with connection(stack.host, stack.port, rcvbuf=4096) as client:
        client.send(request("GET", f"/_sim/stream?bytes={total}"))
        time.sleep(4)  # 1 s send timeout, and margin for a loaded machine
        received = 0
        closed = False
        for _ in range(10_000):
            try:
                data = client.sock.recv(MIB)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break  # still open, and silent
            if not data:
                closed = True
                break
            received += len(data)
    assert closed and received < total, received
    assert stack.violations("send_timeout") == before + 1


def test_hostile_connections_leak_no_descriptors(stack: Stack) -> None:
    pid = stack.proxy.pid
    _write(stack, b"m v=1")  # the backend connection is open before counting
    before = open_fds(pid)
    for _ in range(3):
        with connection(stack.host, stack.port) as client:
            client.send(request("POST", "/write?db=x", [("Content-Length", "100")], b"m v"))  # stalls
        with connection(stack.host, stack.port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 70_000)
        with connection(stack.host, stack.port) as client:
            client.send(b"GET /ping HTTP/1.1\r\n")  # half a head, then gone
    after = before + 100
    for _ in range(50):
        after = open_fds(pid)
        if after <= before:
            break
        time.sleep(0.1)
    assert after <= before, f"{after - before} descriptors left open"
