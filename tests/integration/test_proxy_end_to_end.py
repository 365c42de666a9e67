"""The proxy as users run it, in front of simulated nodes found through a real DNS server."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from collections import Counter

import httpx
import pytest

from sim.dns import DNSServer
from sim.processes import NodeProcess
from tests.integration.conftest import NODE_IPS, SERVICE, ProxyFactory, backends_view
from tests.integration.memory import peak_rss

pytestmark = pytest.mark.integration


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if predicate():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_writes_and_queries_round_robin_over_discovered_nodes(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy()
    proxy.wait_ready()
    wait_until(lambda: set(backends_view(proxy).values()) == {"active"}, 5, "all nodes active")
    served_by: Counter[str] = Counter()
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        for i in range(30):
            r = client.post(
                "/write?db=demo", content=f"cpu,host=h{i} value={i} {1_700_000_000_000_000_000 + i}"
            )
            assert r.status_code == 204, r.text
            served_by[r.headers["x-sim-node"]] += 1
        q = client.get("/query", params={"db": "demo", "q": "SHOW DATABASES"})
        assert q.status_code == 200 and q.headers["x-influxdb-version"]
    assert len(served_by) == 3 and min(served_by.values()) == 10
    assert sum(node.point_count() for node in nodes.values()) == 30


def test_headers_and_body_reach_the_node_exactly(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(public_paths="*")
    proxy.wait_ready()
    body = bytes(range(256)) * 10
    raw = (
        b"POST /_sim/echo/a%2Fb?x=1&y=%22two%22&p=secret HTTP/1.1\r\n"
        b"Host: proxy.example\r\nContent-Type: application/octet-stream\r\nContent-Encoding: gzip\r\n"
        b"X-Dup: 1\r\nX-Dup: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: drop me\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    ) + body
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(raw)
        response = _read_http_response(sock)
    status_line, headers, payload = response
    assert status_line.startswith(b"HTTP/1.1 200")
    echo = json.loads(payload)
    assert echo["raw_path"] == "/_sim/echo/a%2Fb" and echo["query_string"] == "x=1&y=%22two%22&p=secret"
    assert base64.b64decode(echo["body_b64"]) == body
    received = [(name.lower(), value) for name, value in echo["headers"]]
    assert ("x-dup", "1") in received and ("x-dup", "2") in received
    assert not any(name in ("x-hop", "connection", "keep-alive") for name, _ in received)
    names = [name for name, _ in received]
    assert "user-agent" not in names and "accept-encoding" not in names  # nothing added
    assert ("content-encoding", "gzip") in received and ("x-forwarded-proto", "http") in received
    assert ("x-forwarded-for", "127.0.0.1") in received
    assert [h for h in headers if h[0].lower() == b"date"].__len__() <= 1
    assert not [h for h in headers if h[0].lower() == b"server" and h[1] == b"uvicorn"][1:]


def _read_http_response(sock: socket.socket) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    data = b""
    for _ in range(10_000):
        if b"\r\n\r\n" in data:
            break
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = [tuple(part.strip() for part in line.split(b":", 1)) for line in lines]
    values = {name.lower(): value for name, value in headers}
    if b"content-length" in values:
        length = int(values[b"content-length"])
        for _ in range(10_000):
            if len(rest) >= length:
                break
            rest += sock.recv(65536)
        return status_line, headers, rest[:length]  # type: ignore[return-value]
    body = b""
    for _ in range(100_000):  # chunked
        while b"\r\n" not in rest:
            rest += sock.recv(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += sock.recv(65536)
        body, rest = body + rest[:size], rest[size + 2 :]
        if size == 0:
            break
    return status_line, headers, body  # type: ignore[return-value]


def test_discovery_follows_dns_and_probes_newcomers_at_once(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory, dns_server: DNSServer
) -> None:
    proxy = start_proxy(health_interval_secs="30")  # only discovery-time probes can activate a node
    wait_until(lambda: sorted(backends_view(proxy)) == sorted(NODE_IPS), 5, "three backends")
    wait_until(lambda: set(backends_view(proxy).values()) == {"active"}, 5, "all active")
    dns_server.set_records(SERVICE, NODE_IPS[:2])
    wait_until(lambda: sorted(backends_view(proxy)) == sorted(NODE_IPS[:2]), 3, "a backend to leave")
    dns_server.set_records(SERVICE, NODE_IPS)
    wait_until(lambda: backends_view(proxy).get(NODE_IPS[2]) == "active", 3, "the newcomer to be active")


def test_failed_lookup_keeps_pool(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory, dns_server: DNSServer
) -> None:
    proxy = start_proxy()
    proxy.wait_ready()
    dns_server.remove(SERVICE)  # NXDOMAIN from now on
    time.sleep(1.0)
    assert sorted(backends_view(proxy)) == sorted(NODE_IPS)
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert "hyperbytedb_proxy_discovery_errors_total 0.0" not in metrics
    assert httpx.get(f"{proxy.url}/ping").status_code == 204


def test_drain_state_is_seen_and_writes_never_fail(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(health_interval_secs="5")  # slow probes: the proxy must retry the drain 503s
    proxy.wait_ready()
    nodes[NODE_IPS[0]].set_state("draining")
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        for i in range(12):
            r = client.post("/write?db=d", content=f"m v={i} {1_700_000_000_000_000_000 + i}")
            assert r.status_code == 204
    assert nodes[NODE_IPS[0]].point_count() == 0
    wait_until(lambda: backends_view(proxy)[NODE_IPS[0]] == "draining", 7, "draining health")


def test_held_request_is_served_when_a_node_returns(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy()
    proxy.wait_ready()
    for node in nodes.values():
        node.set_state("syncing")
    wait_until(lambda: httpx.get(f"{proxy.url}/readyz").status_code == 503, 3, "not ready")
    result: dict[str, object] = {}

    def write() -> None:
        started = time.monotonic()
        r = httpx.post(f"{proxy.url}/write?db=d", content=b"m v=1 1700000000000000000", timeout=10)
        result.update(status=r.status_code, took=time.monotonic() - started)

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(1.0)
    nodes[NODE_IPS[1]].set_state("active")
    thread.join(timeout=10)
    assert result["status"] == 204 and 0.9 < result["took"] < 4  # type: ignore[operator]
    assert nodes[NODE_IPS[1]].point_count() == 1


def test_large_stream_passes_with_flat_memory(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(public_paths="*")
    proxy.wait_ready()
    size = 1024 * 1024 * 1024
    received = 0
    params = {"bytes": size}
    with peak_rss(proxy.pid) as memory, httpx.stream("GET", f"{proxy.url}/_sim/stream", params=params) as r:
        assert r.status_code == 200 and "content-length" not in r.headers
        for chunk in r.iter_raw(1024 * 1024):
            received += len(chunk)
    assert received == size
    assert memory.growth < 48, f"proxy RSS grew {memory.growth:.1f} MiB while streaming 1 GiB"


def test_client_leaving_mid_stream_frees_everything(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(public_paths="*")
    proxy.wait_ready()
    with httpx.stream(
        "GET",
        f"{proxy.url}/_sim/stream",
        params={"bytes": 50_000_000, "chunk": 65536, "delay": 0.01},
        timeout=10,
    ) as r:
        chunks = r.iter_raw(65536)  # keep a reference: a dropped iterator closes the connection
        next(chunks)
        view = httpx.get(f"{proxy.url}/admin/backends").json()
        assert sum(b["inflight"] for b in view["backends"]) == 1, (view, proxy.log_text())
    # the client closed its connection mid-body
    wait_until(
        lambda: sum(b["inflight"] for b in httpx.get(f"{proxy.url}/admin/backends").json()["backends"]) == 0,
        3,
        "the backend request to be released",
    )
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert "hyperbytedb_proxy_inflight_requests 0.0" in metrics
    assert 'hyperbytedb_proxy_requests_total{outcome="client_closed"} 1.0' in metrics


def test_sigterm_drains_a_stream_in_flight_and_exits_0(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(public_paths="*")
    proxy.wait_ready()
    size = 4 * 1024 * 1024
    received = [0]
    status = [0]

    def download() -> None:
        params = {"bytes": size, "chunk": 65536, "delay": 0.03}  # about 2 s
        with httpx.stream("GET", f"{proxy.url}/_sim/stream", params=params, timeout=20) as r:
            status[0] = r.status_code
            for chunk in r.iter_raw():
                received[0] += len(chunk)

    thread = threading.Thread(target=download)
    thread.start()
    wait_until(lambda: received[0] > 0, 5, "the stream to start")
    proxy.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proxy.url}/healthz", timeout=1)  # new connections are refused
    thread.join(timeout=20)
    assert status[0] == 200 and received[0] == size  # untruncated
    assert proxy.wait_exit(timeout=10) == 0


def test_json_logs_redact_credentials(nodes: dict[str, NodeProcess], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    proxy.wait_ready()
    httpx.get(f"{proxy.url}/query", params={"q": "SHOW DATABASES", "u": "bob", "p": "hunter2"},
              headers={"Authorization": "Basic Ym9iOmh1bnRlcjI="})  # fmt: skip
    proxy.stop()
    lines = [json.loads(line) for line in proxy.log_text().splitlines() if line.startswith("{")]
    assert lines and all("level" in line and "msg" in line for line in lines)
    access = [line for line in lines if line["logger"] == "hyperbytedb_proxy.access"]
    assert access and access[-1]["path"] == "/query" and access[-1]["status"] == 200
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's lines are JSON too
    text = proxy.log_text()
    assert "hunter2" not in text and "Ym9iOmh1bnRlcjI=" not in text


def test_client_leaving_while_held_frees_its_place(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(hold_timeout_secs="20")
    proxy.wait_ready()
    for node in nodes.values():
        node.set_state("syncing")
    wait_until(lambda: httpx.get(f"{proxy.url}/readyz").status_code == 503, 3, "not ready")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{proxy.url}/write?db=d", content=b"m v=1 1", timeout=0.5)  # the client gives up
    wait_until(
        lambda: httpx.get(f"{proxy.url}/admin/backends").json()["held_requests"] == 0,
        3,
        "the hold to be released",
    )
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'hyperbytedb_proxy_requests_total{outcome="client_closed"} 1.0' in metrics
    assert "hyperbytedb_proxy_held_requests 0.0" in metrics
    assert "hyperbytedb_proxy_buffered_request_bytes 0.0" in metrics
