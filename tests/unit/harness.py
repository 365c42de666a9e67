"""An in-process proxy with mocked backends, probes and DNS, for fast unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import respx

from app.access_log import AccessLog
from app.backend import Backend, Health
from app.discovery import LookupFailed
from app.main import create_app
from app.settings import Settings, load_settings
from app.state import ProxyState

SERVICE = "db.test"
BACKEND_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class FakeResolver:
    """Answers from a table a test can change; a name mapped to None fails to resolve."""

    def __init__(self, table: dict[str, list[str] | None]) -> None:
        self.table = table
        self.calls = 0

    async def resolve(self, name: str) -> list[str]:
        self.calls += 1
        answer = self.table.get(name)
        if answer is None:
            raise LookupFailed(f"{name}: NXDOMAIN")
        return list(answer)


def make_settings(**env: Any) -> Settings:
    values = {
        "HYPERBYTEDB_PROXY_BACKEND_SERVICE": SERVICE,
        # Background loops stay quiet unless a test drives them.
        "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "3600",
        "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "3600",
        "HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": "0.5",
    }
    values.update({f"HYPERBYTEDB_PROXY_{key.upper()}": str(value) for key, value in env.items()})
    return load_settings(values)


class Harness:
    """A proxy app whose backends are respx routes and whose DNS is a table."""

    def __init__(
        self, ips: Iterable[str] = BACKEND_IPS, *, access_log: AccessLog | None = None, **env: Any
    ) -> None:
        self.settings = make_settings(**env)
        self.backends = respx.MockRouter(assert_all_called=False, assert_all_mocked=True)
        self.probes = respx.MockRouter(assert_all_called=False, assert_all_mocked=True)
        self.scripted_probes: dict[str, list[httpx.Response | Exception]] = {}
        self.probes.get(path=self.settings.health_path).mock(side_effect=self._probe_answer)
        self.resolver = FakeResolver({SERVICE: list(ips)})
        self.app = create_app(
            self.settings,
            forward_transport=httpx.MockTransport(self.backends.async_handler),
            probe_transport=httpx.MockTransport(self.probes.async_handler),
            resolver=self.resolver,
            access_log=access_log,
        )
        self.state: ProxyState = self.app.state.proxy
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://proxy")

    def _probe_answer(self, request: httpx.Request) -> httpx.Response:
        script = self.scripted_probes.get(request.url.host)
        answer = script.pop(0) if script else httpx.Response(200, json={"status": "pass"})
        if isinstance(answer, Exception):
            raise answer
        return answer

    def script_probes(self, ip: str, *answers: httpx.Response | Exception) -> None:
        """The next probes of ``ip`` get these answers, in order; then 200 again."""
        self.scripted_probes[ip] = list(answers)

    def backend(self, ip: str) -> Backend:
        found = self.state.pool.get(ip)
        assert found is not None, ip
        return found

    def set_health(self, ip: str, health: Health) -> None:
        self.state.pool.set_health(self.backend(ip), health, "set by test")

    def calls_to(self, ip: str) -> int:
        return sum(1 for call in self.backends.calls if call.request.url.host == ip)

    def tried_hosts(self) -> list[str]:
        return [call.request.url.host for call in self.backends.calls]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        self.state.metrics.sync()  # as a scrape does
        value = self.state.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    @contextlib.asynccontextmanager
    async def running(self, *, wait_active: int | None = None) -> AsyncIterator[Harness]:
        async with self.state.running():
            await self.wait_routable(len(self.state.pool) if wait_active is None else wait_active)
            try:
                yield self
            finally:
                await self.client.aclose()

    async def wait_routable(self, count: int, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while self.state.pool.routable_count < count:
                await self.state.pool.wait_routable(timeout)
