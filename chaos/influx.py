"""Scenario 8: the crash scenario again, in front of real InfluxDB 1.x servers.

Three independent ``influxd`` processes (Debian's ``influxdb`` package) on
127.0.0.2-4, each with its own meta/data/wal directories under the scenario's
work dir, the proxy probing ``/ping``, and the classic Python client library
(``influxdb.InfluxDBClient``) writing and querying through the proxy from a
small, bounded pool of threads (the library is synchronous).  One server is
SIGKILLed mid-load and restarted on the same directories; afterwards every
acknowledged point must be queryable from some server (queried directly).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos.harness import DB, MEASUREMENT, NODE_IPS, Cluster, access_log
from chaos.load import Sample
from chaos.report import ScenarioResult
from chaos.scenarios import MAX_ROUNDS, Options, check_no_failures, check_writes_found
from sim.processes import ManagedProcess, ProxyProcess, free_port_on_all, minimal_env

INFLUXD = "influxd"
THREADS = 8
POINTS_PER_WRITE = 5
MAX_CALLS_PER_THREAD = 200_000
CLIENT_TIMEOUT_SECS = 30


def influxd_path() -> str | None:
    return shutil.which(INFLUXD)


def _port_on_all(preferred: int, hosts: list[str]) -> int:
    """``preferred`` (InfluxDB's usual port) when it is free on every host, else any common free port."""
    if all(_bindable(host, preferred) for host in hosts):
        return preferred
    return free_port_on_all(hosts)


QUIET = {("http", "log-enabled"), ("http", "pprof-enabled"), ("data", "query-log-enabled")}


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def render_config(template: str, *, ip: str, http_port: int, rpc_port: int, root: Path) -> str:
    """``influxd config`` output pointed at ``root`` and bound to ``ip`` only, extras switched off."""
    section = ""
    out: list[str] = []
    for line in template.splitlines():
        stripped = line.strip()
        header = re.fullmatch(r"\[\[?([\w-]+)\]?\]", stripped)
        if header:
            section = header.group(1)
            out.append(line)
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        new_value: str | None = None
        if key == "bind-address":
            if section == "":
                new_value = f'"{ip}:{rpc_port}"'
            elif section == "http":
                new_value = f'"{ip}:{http_port}"'
            else:  # disabled services: still never anything but this loopback address
                port = value.strip().strip('"').rpartition(":")[2] or "0"
                new_value = f'"{ip}:{port}"'
        elif key == "reporting-enabled":
            new_value = "false"
        elif section == "meta" and key == "dir":
            new_value = f'"{root / "meta"}"'
        elif section == "data" and key == "dir":
            new_value = f'"{root / "data"}"'
        elif section == "data" and key == "wal-dir":
            new_value = f'"{root / "wal"}"'
        elif key == "enabled" and section in (
            "graphite",
            "collectd",
            "opentsdb",
            "udp",
            "ifql",
            "continuous_queries",
        ):
            new_value = "false"
        elif section == "monitor" and key == "store-enabled":
            new_value = "false"  # no _internal database writes competing with the test
        elif (section, key) in QUIET:
            new_value = "false"
        out.append(f"{indent}{key} = {new_value}" if new_value is not None else line)
    return "\n".join(out) + "\n"


class InfluxdProcess(ManagedProcess):
    """``influxd run -config FILE`` on one loopback IP; restartable on the same directories."""

    kind = "influxd"

    def __init__(self, host: str, port: int, config: Path, *, log_dir: Path) -> None:
        self.host = host
        self.port = port
        self.config = config
        super().__init__(log_dir=log_dir, label=f"{host}-{port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [influxd_path() or INFLUXD, "run", "-config", str(self.config)]

    def environment(self) -> dict[str, str]:
        return minimal_env()  # no INFLUXDB_* overrides leak in

    def wait_ready(self, timeout: float = 30.0) -> InfluxdProcess:
        self._poll_status(f"{self.url}/ping", 204, timeout, "answering /ping")
        return self


class InfluxCluster(Cluster):
    """The same DNS + proxy, in front of ``influxd`` servers instead of simulated nodes."""

    def __init__(self, workdir: Path, *, proxy_argv: Sequence[str] | None = None) -> None:
        super().__init__(workdir, proxy_env={"HYPERBYTEDB_PROXY_HEALTH_PATH": "/ping"}, proxy_argv=proxy_argv)
        self.port = _port_on_all(8086, list(self.node_ips))
        self.rpc_port = _port_on_all(8088, list(self.node_ips))
        self.proxy_env["HYPERBYTEDB_PROXY_BACKEND_PORT"] = str(self.port)
        self.servers: dict[str, InfluxdProcess] = {}

    def start(self, *, wait_active: float = 30.0) -> None:
        template = subprocess.run(
            [influxd_path() or INFLUXD, "config"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        self.dns.start()
        for ip in self.node_ips:
            root = self.workdir / f"influxd-{ip}"
            root.mkdir(parents=True, exist_ok=True)
            config = root / "influxdb.conf"
            config.write_text(
                render_config(template, ip=ip, http_port=self.port, rpc_port=self.rpc_port, root=root)
            )
            server = InfluxdProcess(ip, self.port, config, log_dir=self.workdir)
            self.servers[ip] = server
            self._processes.append(server)
            server.start()
        for server in self.servers.values():
            server.wait_ready(timeout=60)
        self.proxy = ProxyProcess(self.proxy_env_with_dns(), argv=self.proxy_argv, log_dir=self.workdir)
        self._processes.append(self.proxy)
        self.proxy.start()
        self.proxy.wait_ready(timeout=20)
        self.wait_health_blocking({ip: "active" for ip in self.node_ips}, wait_active)

    def restart_server(self, ip: str) -> None:
        server = self.servers[ip]
        server.start()
        server.wait_ready(timeout=60)


# --------------------------------------------------------------------------- load (threads)


class ClientLoad:
    """``THREADS`` threads, each with its own InfluxDBClient pointed at the proxy."""

    def __init__(self, proxy_host: str, proxy_port: int, *, pause: float = 0.03) -> None:
        self.host = proxy_host
        self.port = proxy_port
        self.pause = pause
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_stamp = (time.time_ns() // 1_000_000_000) * 1_000_000_000
        self._seq = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=THREADS, thread_name_prefix="influx"
        )
        self._futures: list[concurrent.futures.Future[None]] = []
        self.started = 0.0

    def start(self, max_secs: float) -> None:
        self.started = time.monotonic()
        self._futures = [self._executor.submit(self._worker, i, max_secs) for i in range(THREADS)]

    def stop(self) -> None:
        self._stop.set()

    async def join(self) -> None:
        self.stop()
        if self._futures:
            await asyncio.wait(
                [asyncio.wrap_future(f) for f in self._futures], timeout=CLIENT_TIMEOUT_SECS + 5
            )
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _take(self, count: int) -> tuple[list[int], int]:
        with self._lock:
            first = self._next_stamp
            self._next_stamp += count
            self._seq += count
            return [first + i for i in range(count)], self._seq - count

    def _record(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def _worker(self, index: int, max_secs: float) -> None:
        import requests
        from influxdb import InfluxDBClient

        session = requests.Session()
        session.trust_env = False  # loopback only, whatever proxy variables the environment holds
        client = InfluxDBClient(
            host=self.host, port=self.port, timeout=CLIENT_TIMEOUT_SECS, retries=1, session=session
        )
        deadline = time.monotonic() + max_secs
        try:
            for call in range(MAX_CALLS_PER_THREAD):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
                if call % 10 < 7:
                    stamps, seq = self._take(POINTS_PER_WRITE)
                    points = [
                        {"measurement": MEASUREMENT, "tags": {"client": str(index)},
                         "fields": {"seq": seq + i}, "time": stamp}
                        for i, stamp in enumerate(stamps)
                    ]  # fmt: skip
                    self._call(
                        "write", index, lambda p=points: client.write_points(p, database=DB), tuple(stamps)
                    )
                else:
                    query = f"SELECT count(seq) FROM {MEASUREMENT}"
                    self._call("query", index, lambda q=query: client.query(q, database=DB))
                self._stop.wait(self.pause)
        finally:
            client.close()

    def _call(self, kind: str, index: int, fn: Any, points: tuple[int, ...] = ()) -> None:
        from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError

        start = time.monotonic()
        status: int | None = 204 if kind == "write" else 200
        error: str | None = None
        body = b""
        try:
            result = fn()
            if kind == "write" and result is not True:
                status, error = None, "write returned False"
        except InfluxDBServerError as exc:
            status, error, body = 500, "InfluxDBServerError", str(exc).encode()[:500]
            match = re.search(r"\b(5\d\d)\b", str(exc))
            status = int(match.group(1)) if match else 500
        except InfluxDBClientError as exc:
            status, body = int(exc.code or 0), str(exc).encode()[:500]
        except Exception as exc:  # requests' transport errors
            status, error = None, type(exc).__name__
        self._record(Sample(kind, index, start, time.monotonic(), status, error, points=points, body=body))


def _stored(server: InfluxdProcess) -> set[int]:
    """Timestamps of every chaos point on one server, asked directly (not through the proxy)."""
    import requests
    from influxdb import InfluxDBClient

    session = requests.Session()
    session.trust_env = False
    client = InfluxDBClient(host=server.host, port=server.port, timeout=60, retries=1, session=session)
    try:
        result = client.query(f"SELECT seq FROM {MEASUREMENT}", database=DB, epoch="ns")
        return {int(point["time"]) for point in result.get_points(measurement=MEASUREMENT)}
    finally:
        client.close()


def _create_db(server: InfluxdProcess) -> None:
    import requests
    from influxdb import InfluxDBClient

    session = requests.Session()
    session.trust_env = False
    client = InfluxDBClient(host=server.host, port=server.port, timeout=10, retries=1, session=session)
    try:
        client.create_database(DB)
    finally:
        client.close()


# --------------------------------------------------------------------------- the scenario


async def real_server(opts: Options) -> ScenarioResult:
    """Scenario 2 (crash) again, with influxd behind the proxy and the InfluxDB Python client in front."""
    result = ScenarioResult("real-influxdb", "influxd SIGKILLed mid-load, InfluxDBClient through the proxy")
    if influxd_path() is None:
        result.skipped = "influxd not found on PATH (Debian: apt-get install influxdb)"
        return result
    try:
        import influxdb  # noqa: F401
    except ImportError:
        result.error = "the InfluxDB client library is missing (pip install influxdb)"
        return result
    cluster = InfluxCluster(opts.workdir / result.name, proxy_argv=opts.proxy_argv)
    result.workdir = str(cluster.workdir)
    load: ClientLoad | None = None
    try:
        await asyncio.to_thread(cluster.start)
        assert cluster.proxy is not None
        # Independent servers: each needs the database before the proxy may send it writes.
        await asyncio.gather(*(asyncio.to_thread(_create_db, s) for s in cluster.servers.values()))
        load = ClientLoad(cluster.proxy.host, cluster.proxy.port)
        load.start(max_secs=opts.duration + 300)
        deadline = load.started + opts.duration
        await asyncio.sleep(opts.warmup + 1)
        kills: list[str] = []
        down_secs = 2.0 if opts.short else 4.0
        for index in range(MAX_ROUNDS):
            ip = NODE_IPS[(index + 1) % len(NODE_IPS)]
            started = time.monotonic()
            await asyncio.to_thread(cluster.servers[ip].kill)
            kills.append(ip)
            await asyncio.sleep(down_secs)
            await asyncio.to_thread(cluster.restart_server, ip)
            await cluster.wait_health(ip, "active", 30)
            await asyncio.sleep(1.0)
            if deadline - time.monotonic() < time.monotonic() - started + 1:
                break
        await asyncio.sleep(max(1.0, deadline - time.monotonic()))
        await load.join()
        found: set[int] = set()
        for server in cluster.servers.values():
            found |= await asyncio.to_thread(_stored, server)
        result.fill(load.samples, found, access_log(cluster.proxy.log_text()))
        access = access_log(cluster.proxy.log_text())
        result.notes.append(
            f"influxd {_version()}; {len(kills)} kill(s) of {kills}; "
            f"{sum(1 for a in access if a.attempts > 1)} requests needed more than one attempt; "
            f"HTTP port {cluster.port}, RPC port {cluster.rpc_port}"
        )
        check_no_failures(result)
        check_writes_found(result)
    finally:
        if load is not None:
            load.stop()
            await load.join()
        await cluster.aclose()
        await asyncio.to_thread(cluster.stop)
    return result


def _version() -> str:
    try:
        out = subprocess.run(
            [influxd_path() or INFLUXD, "version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip().removeprefix("InfluxDB ").split(" ")[0]
