"""Replicating nodes: a write reaches every node that is up; a node that was away catches up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sim.processes import NodeProcess, free_port_on_all, stop_all

pytestmark = pytest.mark.integration

IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    port = free_port_on_all(IPS)
    nodes = [
        NodeProcess(
            ip,
            port,
            data_dir=tmp_path / f"node-{ip}",
            replicas=[f"{peer}:{port}" for peer in IPS if peer != ip],
            log_dir=tmp_path,
        )
        for ip in IPS
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout=15).wait_active(timeout=30)
        yield nodes
    finally:
        stop_all(nodes)


def count(http: httpx.Client, node: NodeProcess) -> int:
    response = http.get(f"{node.url}/query", params={"db": "d", "q": "SELECT count(*) FROM cpu"})
    series = response.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_a_write_to_one_node_is_visible_on_every_node(cluster: list[NodeProcess]) -> None:
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        for index, node in enumerate(cluster):
            response = http.post(f"{node.url}/write?db=d", content=f"cpu,host=h{index} v=1 {index + 1}")
            assert response.status_code == 204, response.text
        assert [count(http, node) for node in cluster] == [3, 3, 3]
        # Replication adds no points: every node holds the same three distinct ones.
        assert all(sorted(node.points("d")) == sorted(cluster[0].points("d")) for node in cluster)
        assert cluster[0].point_count() == 3


def test_a_returning_node_syncs_what_it_missed_before_turning_active(cluster: list[NodeProcess]) -> None:
    away = cluster[2]
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        away.stop()
        for index in range(5):
            response = http.post(f"{cluster[index % 2].url}/write?db=d", content=f"cpu v=1 {index + 1}")
            assert response.status_code == 204, response.text
        away.start().wait_ready(timeout=15)
        away.wait_active(timeout=30)
        assert count(http, away) == 5
        assert sorted(away.points("d")) == sorted(cluster[0].points("d"))
        # The writers' backlogs toward it drain once it is back (redelivery adds no point).
        deadline = time.monotonic() + 15
        backlogs: list[int] = []
        for _ in range(300):
            backlogs = [
                link["backlog"]
                for node in cluster[:2]
                for link in node.control("GET", "state")["replication"]
            ]
            if not any(backlogs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert backlogs == [0, 0, 0, 0]
        assert away.point_count() == 5


def test_a_returning_node_reports_syncing_until_caught_up(tmp_path: Path) -> None:
    port = free_port_on_all(IPS[:2])
    peer = NodeProcess(IPS[0], port, log_dir=tmp_path, replicas=[f"{IPS[1]}:{port}"])
    # The peer hangs, so the catch-up cannot finish until it is released.
    late = NodeProcess(IPS[1], port, log_dir=tmp_path, replicas=[f"{IPS[0]}:{port}"])
    try:
        peer.start().wait_ready(timeout=15).wait_active(timeout=30)
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            assert http.post(f"{peer.url}/write?db=d", content="cpu v=1 1").status_code == 204
            peer.delay(3.0, count=1, paths=["/internal/sync/points"])
            late.start().wait_ready(timeout=15)
            health = http.get(f"{late.url}/health")
            assert health.status_code == 503
            assert health.json() == {"status": "warn", "message": "node is Syncing, not accepting traffic"}
            late.wait_active(timeout=30)
            assert count(http, late) == 1
    finally:
        stop_all([peer, late])
