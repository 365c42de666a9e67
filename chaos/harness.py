"""The cluster under test: DNS, simulated nodes and the proxy, all real processes.

Process control (start, stop, kill) is blocking -- ``sim.processes`` polls
with ``time.sleep`` -- so scenarios call it through ``asyncio.to_thread`` and
the load clients sharing the event loop are never stalled by it.  Reads of
the proxy's admin view use a small async client of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sim.node import read_points
from sim.processes import DNSProcess, ManagedProcess, NodeProcess, ProxyProcess, free_port_on_all, stop_all

SERVICE = "hyperbytedb.chaos"
NODE_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SPARE_IP = "127.0.0.5"
DB = "chaos"
MEASUREMENT = "chaos"
POLL_SECS = 0.05

# Short intervals so a fault is seen within a second; the values the brief asks for.
BASE_PROXY_ENV: dict[str, str] = {
    "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
    "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.5",
    "HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS": "500",
    "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "1",
    "HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": "10",
    "HYPERBYTEDB_PROXY_CONNECT_TIMEOUT_MS": "500",
    "HYPERBYTEDB_PROXY_REQUEST_TIMEOUT_SECS": "15",
    "HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS": "10",
    "HYPERBYTEDB_PROXY_PUBLIC_PATHS": "*",  # streaming scenarios go through the proxy to /_sim/stream
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "info",
}


def env_secs(env: Mapping[str, str], name: str) -> float:
    """A seconds setting of the proxy environment (``..._MS`` values converted)."""
    value = float(env[f"HYPERBYTEDB_PROXY_{name}"])
    return value / 1000 if name.endswith("_MS") else value


class Cluster:
    """DNS + nodes + proxy in one work directory; :meth:`stop` stops all of them."""

    def __init__(
        self,
        workdir: Path,
        *,
        proxy_env: Mapping[str, str] | None = None,
        node_ips: Iterable[str] = NODE_IPS,
        sync_secs: float = 1.0,
        proxy_argv: Sequence[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.proxy_argv = list(proxy_argv) if proxy_argv else None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node_ips = list(node_ips)
        self.sync_secs = sync_secs
        # One port free on every address a node may take, as pods of a StatefulSet share one.
        self.port = free_port_on_all([*self.node_ips, SPARE_IP])
        self.proxy_env = {
            **BASE_PROXY_ENV,
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(self.port),
            **(proxy_env or {}),
        }
        self.dns = DNSProcess(
            0, workdir / "zone.json", records={f"{SERVICE}.": self.node_ips}, log_dir=workdir
        )
        self.nodes: dict[str, NodeProcess] = {}
        self.proxy: ProxyProcess | None = None
        self._processes: list[ManagedProcess] = [self.dns]
        self._admin: httpx.AsyncClient | None = None

    # ----------------------------------------------------------------- lifecycle (blocking)

    def start(self, *, wait_active: float = 15.0) -> None:
        """DNS, nodes, then the proxy; returns once the proxy sees every node Active."""
        self.dns.start()
        for ip in self.node_ips:
            self.new_node(ip)
        for node in self.nodes.values():
            node.wait_ready(timeout=15)
        self.proxy = ProxyProcess(self.proxy_env_with_dns(), argv=self.proxy_argv, log_dir=self.workdir)
        self._processes.append(self.proxy)
        self.proxy.start()
        self.proxy.wait_ready(timeout=20)
        self.wait_health_blocking({ip: "active" for ip in self.node_ips}, wait_active)

    def proxy_env_with_dns(self) -> dict[str, str]:
        return {**self.proxy_env, "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": self.dns.nameserver}

    def new_node(self, ip: str, *, state: str = "active", sync_secs: float | None = None) -> NodeProcess:
        """Start a node on ``ip`` with its own data dir (not yet in DNS unless it already was)."""
        node = NodeProcess(
            ip,
            self.port,
            state=state,
            data_dir=self.workdir / f"data-{ip}",
            name=f"node-{ip.rsplit('.', 1)[1]}",
            sync_secs=sync_secs,
            log_dir=self.workdir,
        )
        self.nodes[ip] = node
        self._processes.append(node)
        node.start()
        return node

    def restart_node(self, ip: str, *, state: str = "syncing", sync_secs: float | None = None) -> None:
        """Start a stopped node again on the same data dir, as a restarted pod (default: Syncing first)."""
        node = self.nodes[ip]
        node.state = state
        node.sync_secs = self.sync_secs if sync_secs is None and state == "syncing" else sync_secs
        node.start()
        node.wait_ready(timeout=15)

    def stop(self) -> None:
        """Stop everything this cluster started (idempotent; SIGKILL after a grace)."""
        stop_all(self._processes, timeout=5.0)

    def wait_health_blocking(self, want: Mapping[str, str], timeout: float) -> None:
        assert self.proxy is not None
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        for _ in range(int(timeout / POLL_SECS) + 2):
            try:
                data = self.proxy.client.get(f"{self.proxy.url}/admin/backends").json()
                seen = {b["address"]: b["health"] for b in data["backends"]}
            except httpx.HTTPError:
                pass
            if all(seen.get(ip) == health for ip, health in want.items()):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECS)
        raise TimeoutError(f"proxy did not see {dict(want)} within {timeout}s (last {seen})")

    # ----------------------------------------------------------------- async helpers

    @property
    def admin(self) -> httpx.AsyncClient:
        if self._admin is None:
            self._admin = httpx.AsyncClient(timeout=2.0, trust_env=False)
        return self._admin

    async def aclose(self) -> None:
        if self._admin is not None:
            await self._admin.aclose()
            self._admin = None

    async def backends(self) -> dict[str, dict[str, Any]]:
        """The proxy's view: address -> backend JSON."""
        assert self.proxy is not None
        response = await self.admin.get(f"{self.proxy.url}/admin/backends")
        return {b["address"]: b for b in response.json()["backends"]}

    async def wait_health(self, ip: str, health: str | None, timeout: float) -> float:
        """Wait until the proxy shows ``ip`` with ``health`` (None: gone from the pool); seconds waited."""
        started = time.monotonic()
        last: Any = None
        for _ in range(int(timeout / POLL_SECS) + 2):
            try:
                backends = await self.backends()
                last = backends.get(ip, {}).get("health")
                if last == health:
                    return time.monotonic() - started
            except httpx.HTTPError as exc:
                last = repr(exc)
            if time.monotonic() - started >= timeout:
                break
            await asyncio.sleep(POLL_SECS)
        raise TimeoutError(f"proxy did not show {ip} as {health} within {timeout}s (last: {last})")

    async def readyz(self) -> int | str:
        assert self.proxy is not None
        try:
            return (await self.admin.get(f"{self.proxy.url}/readyz")).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    async def node_control(self, ip: str, method: str, path: str, body: Any = None) -> Any:
        node = self.nodes[ip]
        response = await self.admin.request(method, f"{node.url}/_sim/{path}", json=body)
        response.raise_for_status()
        return response.json()

    async def set_state(self, ip: str, state: str, sync_secs: float | None = None) -> None:
        body: dict[str, Any] = {"state": state}
        if sync_secs is not None:
            body["sync_secs"] = sync_secs
        await self.node_control(ip, "POST", "state", body)

    async def stored_timestamps(self, db: str = DB) -> set[int]:
        """Distinct timestamps of ``chaos`` points over every node that ever ran (union)."""
        found: set[int] = set()
        for node in self.nodes.values():
            if node.running:
                lines = (await self.node_control(node.host, "GET", f"points?db={db}"))["points"]
            else:
                assert node.data_dir is not None
                lines = read_points(node.data_dir)  # a pod that is gone: its volume still counts
            found.update(timestamps_of(lines))
        return found


def timestamps_of(lines: Iterable[str]) -> set[int]:
    """Timestamps of the chaos measurement's points in line protocol with explicit ns timestamps."""
    out: set[int] = set()
    for line in lines:
        if line.startswith(MEASUREMENT + ","):
            with contextlib.suppress(ValueError, IndexError):
                out.add(int(line.rsplit(" ", 1)[1]))
    return out


# --------------------------------------------------------------------------- access log


@dataclass(frozen=True, slots=True)
class Access:
    """One access-log line of the proxy."""

    end: float  # wall clock seconds (ms resolution)
    method: str
    path: str
    status: int
    outcome: str
    backend: str | None
    attempts: int
    held_ms: float
    duration_ms: float

    @property
    def start(self) -> float:
        return self.end - self.duration_ms / 1000


def _wall(ts: str) -> float:
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()


def access_log(text: str) -> list[Access]:
    """Parse the proxy's JSON access lines (``LOG_FORMAT=json``)."""
    entries: list[Access] = []
    for line in text.splitlines():
        if not line.startswith("{") or '"hyperbytedb_proxy.access"' not in line:
            continue
        try:
            item = json.loads(line)
            entries.append(
                Access(
                    end=_wall(item["ts"]),
                    method=item.get("method", ""),
                    path=item.get("path", ""),
                    status=int(item.get("status") or 0),
                    outcome=item.get("outcome", ""),
                    backend=item.get("backend"),
                    attempts=int(item.get("attempts") or 0),
                    held_ms=float(item.get("held_ms") or 0),
                    duration_ms=float(item.get("duration_ms") or 0),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return entries
