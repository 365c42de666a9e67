"""Secure by default, end to end: the public surface, the admin listener, TLS on both sides.

Real processes on loopback: simulated HyperbyteDB nodes (plain and TLS), the
test DNS server, the proxy, and real clients (curl, openssl s_client, the
influx CLI, the influxdb Python client) with certificates made by the tests.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sim.dns import DNSServer
from sim.processes import NodeProcess, ProxyProcess, free_port, minimal_env
from tests.integration.conftest import NODE_IPS, SERVICE, ProxyFactory
from tests.integration.tls_support import Pair, SecretVolume, SecureProxy, TestCA, TLSNode, client_context

pytestmark = pytest.mark.integration

# Every spelling must end at /internal/drain (or another internal path) on a
# backend that decodes and normalises; none may be forwarded.
INTERNAL_SPELLINGS = (
    "/internal/drain",
    "//internal/drain",
    "/%69nternal/drain",
    "/write/../internal/drain",
    "/./internal/drain",
    "/write%2F..%2Finternal%2Fdrain",
    "/api/v1/..%2F..%2Finternal/drain",
    "/%2e%2e/internal/drain",
    "/write/..%252Finternal/drain",
    "/internal/raft/vote",
    "/cluster/raft/change-membership",
    "/_sim/state",
)
ADMIN_PATHS = ("/healthz", "/readyz", "/metrics", "/admin", "/admin/backends", "/admin/pool")
REPO = Path(__file__).parents[2]


def raw_request(
    port: int, method: str, target: str, *, context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side normalisation) and return status and body."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=5)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=5, context=context)
    try:
        conn.request(method, target, body=b"" if method == "POST" else None)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def reached_paths(nodes: dict[str, NodeProcess]) -> set[str]:
    """Paths the nodes served, other than probes and the tests' own control calls."""
    seen: set[str] = set()
    for node in nodes.values():
        seen |= {p for p in node.requests()["paths"] if not p.startswith("/_sim/requests") and p != "/health"}
    return seen


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError(f"not {what} within {timeout}s")


def assert_refused_everywhere(port: int, nodes: dict[str, NodeProcess], paths: tuple[str, ...]) -> None:
    for node in nodes.values():
        node.reset()
    for path in paths:
        for method in ("GET", "POST"):
            status, body = raw_request(port, method, path)
            assert status == 404, f"{method} {path}: {status} {body!r}"
            assert "error" in json.loads(body), f"{method} {path}: {body!r}"
    assert reached_paths(nodes) == set(), "a refused path reached a backend"
    status, _ = raw_request(port, "GET", "/ping")
    assert status == 204
    assert reached_paths(nodes) == {"/ping"}


# --------------------------------------------------------------------------- public surface


def test_internal_paths_are_refused_on_the_single_listener(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy()
    proxy.wait_ready()
    assert_refused_everywhere(proxy.port, nodes, INTERNAL_SPELLINGS)
    metrics = httpx.get(f"{proxy.url}/metrics").text
    refused = len(INTERNAL_SPELLINGS) * 2
    assert f'hyperbytedb_proxy_requests_total{{outcome="not_public"}} {refused}.0' in metrics
    # The exact target still reaches the node for an allowed path.
    status, body = raw_request(proxy.port, "GET", "/query?q=SHOW+DATABASES&db=x%20y")
    assert status == 200, body


@pytest.fixture
def two_listener_proxy(
    tmp_path: Path, node_port: int, dns_server: DNSServer, nodes: dict[str, NodeProcess]
) -> Iterator[SecureProxy]:
    env = {
        "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
        "HYPERBYTEDB_PROXY_BACKEND_PORT": str(node_port),
        "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{dns_server.port}",
        "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.2",
        "HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": "2",
        "LOG_FORMAT": "json",
    }
    proxy = SecureProxy(env, admin_port=free_port("127.0.0.1"), log_dir=tmp_path)
    try:
        proxy.start()
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


def test_two_listeners_keep_admin_routes_off_the_public_port(
    two_listener_proxy: SecureProxy, nodes: dict[str, NodeProcess]
) -> None:
    proxy = two_listener_proxy
    assert_refused_everywhere(proxy.port, nodes, INTERNAL_SPELLINGS + ADMIN_PATHS)
    status, _ = raw_request(proxy.port, "POST", f"/admin/backends/{NODE_IPS[0]}/exclude")
    assert status == 404
    assert proxy.admin_port is not None
    # The admin listener serves the admin routes, and nothing is proxied there.
    for path in ("/healthz", "/readyz", "/admin", "/admin/backends", "/admin/pool"):
        assert raw_request(proxy.admin_port, "GET", path)[0] == 200, path
    metrics = proxy.client.get(f"{proxy.admin_url}/metrics").text
    assert 'hyperbytedb_proxy_requests_total{outcome="not_public"}' in metrics
    assert raw_request(proxy.admin_port, "GET", "/ping")[0] == 404
    assert "admin listener without ADMIN_TOKEN" in proxy.log_text()


def test_operator_calls_get_upstream_codes_and_fields(two_listener_proxy: SecureProxy) -> None:
    admin = two_listener_proxy.admin_url
    http = two_listener_proxy.client
    ip = NODE_IPS[0]

    first = http.post(f"{admin}/admin/backends/{ip}/exclude")  # no token needed on the admin listener
    assert first.status_code == 200 and first.json()["status"] == "excluded" and first.json()["ip"] == ip
    again = http.post(f"{admin}/admin/backends/{ip}/exclude")
    assert again.status_code == 409 and again.json()["status"] == "already_excluded"

    pool = http.get(f"{admin}/admin/pool").json()
    assert isinstance(pool, list) and len(pool) == len(NODE_IPS)
    fields = {"addr", "port", "health", "excluded", "inflight", "consecutive_failures", "last_probe_unix"}
    for entry in pool:
        assert fields <= entry.keys()
        assert isinstance(entry["last_probe_unix"], int)
    assert {e["addr"]: e["excluded"] for e in pool}[ip] is True
    ready = http.get(f"{admin}/readyz").json()
    assert ready["routable_backends"] == len(NODE_IPS) - 1  # Active and not excluded

    included = http.post(f"{admin}/admin/backends/{ip}/include")
    assert included.status_code == 200 and included.json()["status"] == "included"
    not_excluded = http.post(f"{admin}/admin/backends/{ip}/include")
    assert not_excluded.status_code == 200 and not_excluded.json()["status"] == "not_excluded"

    unknown = http.post(f"{admin}/admin/backends/127.0.0.99/exclude")
    assert unknown.status_code == 404
    assert unknown.json()["status"] == "error" and "127.0.0.99" in unknown.json()["message"]


def test_admin_listen_on_the_public_port_stops_startup(tmp_path: Path) -> None:
    env = minimal_env(
        {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
            "HYPERBYTEDB_PROXY_LISTEN": "127.0.0.1:18086",
            "HYPERBYTEDB_PROXY_ADMIN_LISTEN": "127.0.0.2:18086",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "HYPERBYTEDB_PROXY_ADMIN_LISTEN" in result.stderr and "HYPERBYTEDB_PROXY_LISTEN" in result.stderr


# --------------------------------------------------------------------------- TLS


class TLSWorld:
    """A CA, TLS nodes behind the test DNS name, and a factory for TLS proxies."""

    def __init__(self, tmp_path: Path, node_port: int, dns_server: DNSServer) -> None:
        self.tmp = tmp_path
        self.node_port = node_port
        self.dns_server = dns_server
        self.ca = TestCA(tmp_path / "ca")
        self.other_ca = TestCA(tmp_path / "other-ca", "Someone else's CA")
        self.backend_pair = self.ca.issue("backend", SERVICE)  # the Service name, not the pod IPs
        self.client_pair = self.ca.issue("client", "client.test", client=True)
        self.volume = SecretVolume(tmp_path / "proxy-tls")
        self.volume.publish(self.ca.issue("proxy", "localhost"))
        self.nodes: dict[str, NodeProcess] = {}
        self.proxies: list[SecureProxy] = []

    def start_nodes(self, ips: tuple[str, ...] = NODE_IPS[:2]) -> dict[str, NodeProcess]:
        for ip in ips:
            node = TLSNode(ip, self.node_port, self.backend_pair, self.ca.cert, log_dir=self.tmp)
            self.nodes[ip] = node.start()
        for node in self.nodes.values():
            node.wait_ready()
        self.dns_server.set_records(SERVICE, ips)
        return self.nodes

    def proxy(self, *, listener_tls: bool = True, client_ca: bool = False, **settings: str) -> SecureProxy:
        env = {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(self.node_port),
            "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{self.dns_server.port}",
            "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.2",
            "HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": "2",
            "HYPERBYTEDB_PROXY_BACKEND_TLS": "true",
            "HYPERBYTEDB_PROXY_BACKEND_CA_FILE": str(self.ca.cert),
            "LOG_FORMAT": "json",
        }
        if listener_tls:
            env["HYPERBYTEDB_PROXY_TLS_CERT_FILE"] = str(self.volume.cert)
            env["HYPERBYTEDB_PROXY_TLS_KEY_FILE"] = str(self.volume.key)
        if client_ca:
            env["HYPERBYTEDB_PROXY_TLS_CLIENT_CA_FILE"] = str(self.ca.cert)
        env.update({f"HYPERBYTEDB_PROXY_{k.upper()}": v for k, v in settings.items()})
        proxy = SecureProxy(
            env, ca=self.ca.cert, client_pair=self.client_pair if client_ca else None, log_dir=self.tmp
        )
        self.proxies.append(proxy)
        proxy.start()
        proxy.wait_healthy()
        return proxy

    def stop(self) -> None:
        for process in [*self.proxies, *self.nodes.values()]:
            process.stop()


@pytest.fixture
def tls_world(tmp_path: Path, node_port: int, dns_server: DNSServer) -> Iterator[TLSWorld]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    world = TLSWorld(tmp_path, node_port, dns_server)
    try:
        yield world
    finally:
        world.stop()


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package: see docs/development.md)")
    return path


def test_tls_on_both_sides_with_real_clients(tls_world: TLSWorld) -> None:
    nodes = tls_world.start_nodes()
    proxy = tls_world.proxy()
    proxy.wait_ready()
    ca = str(tls_world.ca.cert)
    backends = proxy.backends()
    assert {b["health"] for b in backends.values()} == {"active"}

    # curl, verifying the proxy's certificate against the test CA by name.
    curl = subprocess.run(
        [_tool("curl"), "-sS", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}", f"{proxy.url}/ping"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert curl.returncode == 0 and curl.stdout == "204", curl.stderr

    # openssl s_client: the chain verifies; TLS 1.1 and a weak TLS 1.2 cipher are refused.
    def s_client(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-servername", "localhost",
             "-verify_hostname", "localhost", "-CAfile", ca, "-verify_return_error", "-brief", *extra],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    good = s_client()
    assert good.returncode == 0 and "Verification: OK" in good.stderr, good.stderr
    assert s_client("-tls1_1").returncode != 0
    assert s_client("-tls1_2", "-cipher", "AES128-SHA").returncode != 0

    # The influx CLI over https (Go reads the CA from SSL_CERT_FILE), a write and a query.
    influx_env = minimal_env({"SSL_CERT_FILE": ca, "HOME": str(tls_world.tmp)})
    base = [_tool("influx"), "-ssl", "-host", "localhost", "-port", str(proxy.port)]
    insert = subprocess.run(
        [*base, "-database", "cli", "-execute", "INSERT cpu,host=a value=1 1700000000000000000"],
        env=influx_env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert insert.returncode == 0, insert.stdout + insert.stderr
    show = subprocess.run(
        [*base, "-execute", "SHOW DATABASES"], env=influx_env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert show.returncode == 0, show.stdout + show.stderr

    # The influxdb Python client with a CA bundle.
    from influxdb import InfluxDBClient

    client = InfluxDBClient(
        host="localhost", port=proxy.port, ssl=True, verify_ssl=ca, database="py", timeout=10
    )
    try:
        assert client.write_points([{"measurement": "mem", "fields": {"used": 1}, "time": 1700000000}])
        client.query("SHOW DATABASES")
    finally:
        client.close()

    stored = sum(node.point_count("cli") for node in nodes.values())
    stored_py = sum(node.point_count("py") for node in nodes.values())
    assert (stored, stored_py) == (1, 1)


def test_client_certificates_are_required_when_configured(tls_world: TLSWorld) -> None:
    tls_world.start_nodes()
    proxy = tls_world.proxy(client_ca=True)
    proxy.wait_ready()
    ca = str(tls_world.ca.cert)
    common = [_tool("curl"), "-sS", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}"]
    without = subprocess.run([*common, f"{proxy.url}/ping"], capture_output=True, text=True, timeout=30)
    assert without.returncode != 0 and without.stdout in ("", "000")
    pair: Pair = tls_world.client_pair
    with_cert = subprocess.run(
        [*common, "--cert", str(pair.cert), "--key", str(pair.key), f"{proxy.url}/ping"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert with_cert.returncode == 0 and with_cert.stdout == "204", with_cert.stderr


def test_certificate_rotation_under_load_fails_no_request(tls_world: TLSWorld) -> None:
    tls_world.start_nodes()
    proxy = tls_world.proxy()
    proxy.wait_ready()
    context = client_context(tls_world.ca.cert)
    serials: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        for _ in range(20_000):  # bounded; the stop event ends it far sooner
            if stop.is_set():
                return
            conn = http.client.HTTPSConnection("localhost", proxy.port, timeout=5, context=context)
            try:
                conn.request("GET", "/ping")  # a new connection each time: a new handshake
                response = conn.getresponse()
                response.read()
                if response.status != 204:
                    failures.append(f"status {response.status}")
                cert = conn.sock.getpeercert() if conn.sock else None
                serials.append(str(cert["serialNumber"]) if cert else "?")
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(serials) >= 20, 15, "serving the load")
        old = serials[-1]
        renewed = tls_world.ca.issue("proxy-renewed", "localhost")
        tls_world.volume.publish(renewed)
        wait_until(lambda: serials[-1] != old, 15, "serving the renewed certificate")
        seen = len(serials)
        wait_until(lambda: len(serials) >= seen + 20, 15, "serving after the renewal")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert failures == []
    assert serials[-1] != old and len(set(serials)) == 2
    assert "TLS certificate reloaded" in proxy.log_text()


@pytest.mark.parametrize("mistake", ["wrong_ca", "wrong_name"])
def test_a_backend_certificate_that_does_not_verify_is_down(tls_world: TLSWorld, mistake: str) -> None:
    nodes = tls_world.start_nodes()
    if mistake == "wrong_ca":
        proxy = tls_world.proxy(listener_tls=False, backend_ca_file=str(tls_world.other_ca.cert))
    else:
        proxy = tls_world.proxy(listener_tls=False, backend_server_name="not-the-service.test")

    def all_down() -> bool:
        view = proxy.backends()
        return len(view) == len(nodes) and all(b["health"] == "down" for b in view.values())

    wait_until(all_down, 10, "marking the backends down")
    for backend in proxy.backends().values():
        assert "certificate verify failed" in str(backend["last_error"]), backend
    assert proxy.client.get(f"{proxy.url}/readyz").status_code == 503
    for node in nodes.values():
        node.reset()
    assert proxy.client.get(f"{proxy.url}/ping").status_code == 503  # held, then refused: never trusted
    assert reached_paths(nodes) == set()


def test_plain_http_proxy_is_unaffected_by_the_tls_options(
    nodes: dict[str, NodeProcess], start_proxy: ProxyFactory
) -> None:
    proxy: ProxyProcess = start_proxy(public_paths="*")
    proxy.wait_ready()
    assert httpx.get(f"{proxy.url}/_sim/state").status_code == 200  # "*" forwards everything


# --------------------------------------------------------------------------- both listeners, drained


def _unready(proxy: SecureProxy) -> bool:
    """Readiness fails at once on SIGTERM: 503 on a kept-alive connection, or a refused new one."""
    try:
        return proxy.client.get(f"{proxy.admin_url}/readyz").status_code == 503
    except httpx.ConnectError:
        return True


def _drain_both_listeners(proxy: SecureProxy, nodes: dict[str, NodeProcess]) -> None:
    """A request in flight on the public listener finishes after SIGTERM; then both sockets close."""
    assert proxy.admin_port is not None
    for node in nodes.values():
        node.delay(1.5, count=None, paths=["/query"])
    result: dict[str, int] = {}

    def slow_query() -> None:
        result["status"] = proxy.client.get(f"{proxy.url}/query", params={"q": "SHOW DATABASES"}).status_code

    thread = threading.Thread(target=slow_query, daemon=True)
    thread.start()
    wait_until(
        lambda: sum(n.requests()["paths"].get("/query", 0) for n in nodes.values()) >= 1, 10, "forwarded"
    )
    proxy.send_signal(signal.SIGTERM)
    wait_until(lambda: _unready(proxy), 5, "unready")
    thread.join(timeout=15)
    assert result.get("status") == 200  # the in-flight request was drained, not cut
    assert proxy.wait_exit(timeout=20) == 0
    for port in (proxy.port, proxy.admin_port):
        with pytest.raises(OSError):
            raw_request(port, "GET", "/ping")


def test_single_process_serves_and_drains_both_tls_listeners(tls_world: TLSWorld) -> None:
    nodes = tls_world.start_nodes()
    tls_world.proxies.append(
        proxy := SecureProxy(
            {**_tls_env(tls_world)},
            ca=tls_world.ca.cert,
            admin_port=free_port("127.0.0.1"),
            log_dir=tls_world.tmp,
        )
    )
    proxy.start()
    proxy.wait_ready()
    assert proxy.client.get(f"{proxy.url}/ping").status_code == 204
    assert proxy.client.get(f"{proxy.url}/metrics").status_code == 404
    assert proxy.client.get(f"{proxy.admin_url}/metrics").status_code == 200
    _drain_both_listeners(proxy, nodes)


def test_gunicorn_workers_serve_and_drain_both_tls_listeners(tls_world: TLSWorld) -> None:
    nodes = tls_world.start_nodes()
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(REPO / "gunicorn.conf.py"),
        "app.main:create_app_from_env()",
    ]
    env = {
        **_tls_env(tls_world),
        "HYPERBYTEDB_PROXY_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tls_world.tmp),
    }
    tls_world.proxies.append(
        proxy := SecureProxy(
            env, ca=tls_world.ca.cert, admin_port=free_port("127.0.0.1"), argv=gunicorn, log_dir=tls_world.tmp
        )
    )
    proxy.start()
    proxy.wait_ready(timeout=20)
    verify = client_context(tls_world.ca.cert)
    # Each worker probes on its own: the one that answered wait_ready may be
    # ready before the other. Both must turn ready within the deadline.
    deadline = time.monotonic() + 20
    ready_in_a_row = 0
    while ready_in_a_row < 10 and time.monotonic() < deadline:
        with httpx.Client(verify=verify, trust_env=False, timeout=5) as client:  # a new connection each
            ready_in_a_row = (
                ready_in_a_row + 1 if client.get(f"{proxy.admin_url}/readyz").status_code == 200 else 0
            )
        time.sleep(0.05)
    assert ready_in_a_row == 10
    for _ in range(10):  # new connections, spread over both workers
        with httpx.Client(verify=verify, trust_env=False, timeout=5) as client:
            assert client.get(f"{proxy.url}/ping").status_code == 204
            assert client.get(f"{proxy.url}/readyz").status_code == 404
            assert client.get(f"{proxy.admin_url}/readyz").status_code == 200
    _drain_both_listeners(proxy, nodes)


def _tls_env(world: TLSWorld) -> dict[str, str]:
    return {
        "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
        "HYPERBYTEDB_PROXY_BACKEND_PORT": str(world.node_port),
        "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": f"127.0.0.1:{world.dns_server.port}",
        "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.3",
        "HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS": "10",
        "HYPERBYTEDB_PROXY_BACKEND_TLS": "true",
        "HYPERBYTEDB_PROXY_BACKEND_CA_FILE": str(world.ca.cert),
        "HYPERBYTEDB_PROXY_TLS_CERT_FILE": str(world.volume.cert),
        "HYPERBYTEDB_PROXY_TLS_KEY_FILE": str(world.volume.key),
        "LOG_FORMAT": "json",
    }


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_a_certificate_that_does_not_load_stops_startup(tmp_path: Path, server: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    env = minimal_env(
        {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
            "HYPERBYTEDB_PROXY_LISTEN": f"127.0.0.1:{free_port('127.0.0.1')}",
            "HYPERBYTEDB_PROXY_TLS_CERT_FILE": str(junk),
            "HYPERBYTEDB_PROXY_TLS_KEY_FILE": str(junk),
        }
    )
    argv = [sys.executable, "-m", "app"]
    if server == "gunicorn":
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(REPO / "gunicorn.conf.py"),
            "app.main:create_app_from_env()",
        ]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert result.returncode == 2, result.stderr
    assert "HYPERBYTEDB_PROXY_TLS_CERT_FILE" in result.stderr and "Traceback" not in result.stderr
