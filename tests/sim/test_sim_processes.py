"""Real processes on loopback: nodes survive SIGKILL, DNS reloads its zone, the demo starts and stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sim.node import read_points
from sim.processes import (
    REPO_ROOT,
    DNSProcess,
    NodeProcess,
    ProcessExited,
    ProxyProcess,
    free_port,
    free_port_on_all,
    minimal_env,
    wait_for_port,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        yield client


def test_node_points_survive_sigkill_and_restart(tmp_path: Path, http: httpx.Client) -> None:
    node = NodeProcess("127.0.0.2", free_port("127.0.0.2"), data_dir=tmp_path / "data", log_dir=tmp_path)
    try:
        node.start().wait_ready(timeout=10)
        body = b"cpu,host=a v=1 1\ncpu,host=b v=2 2\nmem v=3 3\n"
        response = http.post(f"{node.url}/write?db=d", content=body)
        assert response.status_code == 204, response.text
        assert response.headers["x-sim-node"] == node.name
        assert node.point_count() == 3

        node.kill()
        assert not node.running
        assert node.returncode == -signal.SIGKILL

        node.start().wait_ready(timeout=10)
        assert sorted(node.points()) == ["cpu,host=a v=1 1", "cpu,host=b v=2 2", "mem v=3 3"]

        node.set_state("draining")
        drained = http.post(f"{node.url}/write?db=d", content=b"cpu v=1 9")
        assert (drained.status_code, drained.content) == (503, b"")

        node.reset()
        node.fail(200, paths=["/ping"], abort=True, body="partial")
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(f"{node.url}/ping")
        assert http.get(f"{node.url}/ping").status_code == 204
        assert node.requests()["paths"]["/ping"] == 2
    finally:
        node.stop(timeout=5)
    assert not node.running
    assert node.stop() == node.returncode  # idempotent
    assert len(read_points(tmp_path / "data")) == 3


def test_node_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    node = NodeProcess("127.0.0.2", free_port("127.0.0.2"), extra_args=["--no-such-flag"], log_dir=tmp_path)
    try:
        node.start()
        with pytest.raises(ProcessExited, match="no-such-flag"):
            node.wait_ready(timeout=10)
    finally:
        node.stop()


def test_only_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        NodeProcess("10.1.2.3")
    with pytest.raises(ValueError, match="loopback"):
        ProxyProcess({}, listen="0.0.0.0:8086")


def test_dns_process_reloads_rewritten_zone(tmp_path: Path) -> None:
    zone = tmp_path / "zone.json"
    dns_proc = DNSProcess(0, zone, records={"db.test.": ["127.0.0.2"]}, log_dir=tmp_path)
    try:
        dns_proc.start()
        assert dns_proc.port > 0
        assert dns_proc.lookup("db.test") == ["127.0.0.2"]
        dns_proc.set_records("db.test.", ["127.0.0.3", "127.0.0.4"], wait=3.0)
        assert dns_proc.lookup("db.test") == ["127.0.0.3", "127.0.0.4"]
        dns_proc.remove("db.test.", wait=3.0)
        assert dns_proc.lookup("db.test") is None
        assert "dns reloaded" in dns_proc.log_text()
    finally:
        dns_proc.stop()
    assert not dns_proc.running


def test_free_port_and_wait_for_port(tmp_path: Path) -> None:
    port = free_port_on_all(["127.0.0.2", "127.0.0.3"])
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.3", port, timeout=0.2)
    with NodeProcess("127.0.0.3", port, log_dir=tmp_path) as node:
        wait_for_port("127.0.0.3", port, timeout=5)
        assert node.running
    assert node.returncode is not None


def test_proxy_with_bad_env_exits_naming_the_variable(tmp_path: Path) -> None:
    env = {"HYPERBYTEDB_PROXY_BACKEND_SERVICE": "db.test", "HYPERBYTEDB_PROXY_BACKEND_PORT": "not-a-port"}
    proxy = ProxyProcess(env, log_dir=tmp_path)
    try:
        proxy.start()
        code = proxy.wait_exit(timeout=10)
        assert code not in (None, 0), proxy.log_text()
        assert "HYPERBYTEDB_PROXY_BACKEND_PORT" in proxy.log_text()
    finally:
        proxy.stop()


def run_cluster(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sim.cluster`` on free ports; its process group is killed if it overruns."""
    hosts = ["127.0.0.2", "127.0.0.3"]
    argv = [sys.executable, "-m", "sim.cluster", "--nodes", "2", "--duration", "0.5"]
    argv += ["--dns-port", str(free_port("127.0.0.1", udp=True))]
    argv += ["--node-port", str(free_port_on_all(hosts)), *extra]
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=minimal_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=5)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def test_cluster_demo_without_proxy_starts_and_stops(tmp_path: Path) -> None:
    result = run_cluster(tmp_path, "--no-proxy")
    assert result.returncode == 0, result.stdout
    assert "cluster ready" in result.stdout
    assert "cluster stopped" in result.stdout
    assert "http://127.0.0.3:" in result.stdout


def test_cluster_demo_with_proxy_gets_ready(tmp_path: Path) -> None:
    result = run_cluster(tmp_path, "--proxy-port", str(free_port("127.0.0.1")))
    assert result.returncode == 0, result.stdout
    assert "cluster ready" in result.stdout
    assert "/admin/backends" in result.stdout


def test_abandoned_stream_stops_and_hung_node_still_stops(tmp_path: Path, http: httpx.Client) -> None:
    """A client leaving a huge stream must not leave the node spinning; a hung node still shuts down."""
    with NodeProcess("127.0.0.4", free_port("127.0.0.4"), log_dir=tmp_path) as node:
        for _ in range(4):  # whether the node notices the disconnect at once is a race: try a few times
            url = f"{node.url}/_sim/stream?bytes={1 << 40}"
            with httpx.Client(trust_env=False) as streamer, streamer.stream("GET", url) as response:
                assert response.status_code == 200
                assert next(response.iter_raw()).startswith(b"0123456789abcdef")
            assert http.get(f"{node.url}/ping", timeout=1.0).status_code == 204

        node.set_state("hang")
        with pytest.raises(httpx.ReadTimeout):
            http.get(f"{node.url}/health", timeout=0.3)
        assert node.control("GET", "state")["state"] == "hang"
        code = node.stop(timeout=5)
    assert code is not None and code != -signal.SIGKILL, node.log_tail()


def test_reset_fault_reads_the_request_then_resets_the_connection(tmp_path: Path) -> None:
    with NodeProcess("127.0.0.3", free_port("127.0.0.3"), log_dir=tmp_path) as node:
        node.wait_ready(timeout=15)
        with httpx.Client(timeout=5, trust_env=False) as client:
            spec = {"reset": True, "count": None, "paths": ["/query"]}
            assert client.post(f"{node.url}/_sim/fail", json=spec).json()["rules"][0]["reset"] is True
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.post(f"{node.url}/query", data={"q": "SHOW DATABASES"})
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.get(f"{node.url}/query?q=SHOW+DATABASES")
            assert client.get(f"{node.url}/health").status_code == 200  # the probe stays happy
            assert client.get(f"{node.url}/_sim/requests").json()["paths"]["/query"] == 2
    assert "returned without starting response" not in node.log_text()
