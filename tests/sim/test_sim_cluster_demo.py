"""The demo as a user runs it: a point written through the proxy is what every query counts,
and a rolling restart (SIGUSR1) loses no write and leaves every node with every point."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sim.processes import REPO_ROOT, free_port, free_port_on_all, minimal_env

pytestmark = pytest.mark.integration

NODE_IPS = ("127.0.0.2", "127.0.0.3")
DEADLINE_SECS = 90


class Demo:
    """``python -m sim.cluster`` in its own session, its output read line by line in a thread."""

    def __init__(self) -> None:
        self.node_port = free_port_on_all(NODE_IPS)
        self.proxy = f"http://127.0.0.1:{free_port('127.0.0.1')}"
        argv = [sys.executable, "-m", "sim.cluster", "--nodes", str(len(NODE_IPS))]
        argv += ["--duration", str(DEADLINE_SECS), "--proxy-port", self.proxy.rsplit(":", 1)[1]]
        argv += ["--node-port", str(self.node_port), "--dns-port", str(free_port("127.0.0.1", udp=True))]
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=minimal_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self.lines.get(timeout=min(0.5, remaining))
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.output.append(line)
            if text in line:
                return
        pytest.fail(f"{text!r} not printed within {timeout}s:\n" + "\n".join(self.output))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


@pytest.fixture
def demo() -> Iterator[Demo]:
    running = Demo()
    try:
        running.wait_for("Ctrl-C", timeout=60)
        yield running
    finally:
        running.stop()


def count(http: httpx.Client, url: str) -> int:
    response = http.get(f"{url}/query", params={"db": "demo", "q": "SELECT count(*) FROM cpu"})
    assert response.status_code == 200, response.text
    series = response.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def test_the_readme_lines_show_the_point_written(demo: Demo) -> None:
    banner = "\n".join(demo.output)
    assert f"Status page: {demo.proxy}/admin" in banner
    assert f"kill -USR1 {demo.proc.pid}" in banner
    with httpx.Client(timeout=10, trust_env=False) as http:
        written = http.post(f"{demo.proxy}/write?db=demo", content="cpu,host=a value=1")
        assert written.status_code == 204, written.text
        # Round-robin sends the queries to every node: each must see the point.
        assert [count(http, demo.proxy) for _ in range(2 * len(NODE_IPS))] == [1] * (2 * len(NODE_IPS))


def test_a_rolling_restart_loses_no_write(demo: Demo) -> None:
    statuses: list[int] = []
    with httpx.Client(timeout=15, trust_env=False) as http:
        demo.proc.send_signal(signal.SIGUSR1)
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (demo.wait_for("rolling restart done", 60), done.set()))
        waiter.start()
        for index in range(1000):  # until the restart is over (bounded by the waiter's deadline)
            if done.is_set() or not waiter.is_alive():
                break
            response = http.post(
                f"{demo.proxy}/write?db=demo", content=f"cpu,host=r value={index} {index + 1}"
            )
            statuses.append(response.status_code)
            time.sleep(0.1)
        waiter.join(timeout=70)
        assert done.is_set(), "\n".join(demo.output)
        assert len(statuses) >= 10 and set(statuses) == {204}, statuses
        # A write a peer missed while it restarted reaches it from the backlog
        # shortly after: every node converges on every acknowledged point.
        deadline = time.monotonic() + 15
        counts: list[int] = []
        while time.monotonic() < deadline:
            counts = [count(http, f"http://{ip}:{demo.node_port}") for ip in NODE_IPS]
            if counts == [len(statuses)] * len(NODE_IPS):
                break
            time.sleep(0.2)
        assert counts == [len(statuses)] * len(NODE_IPS)
    restarted = [
        line for line in demo.output if line.startswith("rolling restart") and "active again" in line
    ]
    assert len(restarted) == len(NODE_IPS), demo.output
