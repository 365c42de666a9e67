"""The pool follows DNS; failed lookups keep it; new backends are probed at once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.backend import Health
from app.discovery import LookupFailed, SystemResolver
from tests.unit.harness import SERVICE, Harness

pytestmark = pytest.mark.anyio


async def test_changes_join_leave_and_keep_state() -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.3"])
    async with h.running():
        kept = h.backend("127.0.0.2")
        h.set_health("127.0.0.2", Health.DRAINING)
        h.resolver.table[SERVICE] = ["127.0.0.2", "127.0.0.4"]
        probes_before = len(h.probes.calls)
        await h.state.discovery.refresh()
        assert {b.address for b in h.state.pool.backends()} == {"127.0.0.2", "127.0.0.4"}
        assert h.backend("127.0.0.2") is kept and kept.health is Health.DRAINING
        await h.wait_routable(1)  # probed at once, not at the next probe round
        assert h.backend("127.0.0.4").health is Health.ACTIVE
        assert len(h.probes.calls) == probes_before + 1


async def test_vanished_backend_finishes_inflight_requests() -> None:
    import asyncio

    h = Harness(ips=["127.0.0.2"])
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, text="late but whole")

    h.backends.route().mock(side_effect=slow)
    async with h.running():
        request = asyncio.create_task(h.client.get("/query?q=x"))
        await asyncio.sleep(0.05)
        h.resolver.table[SERVICE] = ["127.0.0.3"]
        await h.state.discovery.refresh()
        assert h.state.pool.get("127.0.0.2") is None
        release.set()
        r = await asyncio.wait_for(request, 2)
    assert r.status_code == 200 and r.text == "late but whole"


async def test_failed_lookup_keeps_pool_and_counts() -> None:
    h = Harness(ips=["127.0.0.2"])
    async with h.running():
        h.resolver.table[SERVICE] = None
        await h.state.discovery.refresh()
        await h.state.discovery.refresh()
        assert [b.address for b in h.state.pool.backends()] == ["127.0.0.2"]
        assert h.metric("hyperbytedb_proxy_discovery_errors_total") == 2


async def test_self_ip_never_joins() -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.5"], self_ip="127.0.0.5")
    async with h.running():
        assert [b.address for b in h.state.pool.backends()] == ["127.0.0.2"]


async def test_several_names_are_merged_and_ipv6_works() -> None:
    h = Harness(backend_service="a.test,b.test")
    h.resolver.table = {"a.test": ["127.0.0.2", "::1"], "b.test": ["127.0.0.2", "127.0.0.3"]}
    async with h.running():
        backends = {b.address: b for b in h.state.pool.backends()}
        assert set(backends) == {"127.0.0.2", "::1", "127.0.0.3"}
        assert backends["::1"].base_url == "http://[::1]:8086"
        assert backends["::1"].host_header == "[::1]:8086"


async def test_one_failing_name_keeps_its_last_good_answer() -> None:
    h = Harness(backend_service="a.test,b.test")
    h.resolver.table = {"a.test": ["127.0.0.2"], "b.test": ["127.0.0.3"]}
    async with h.running():
        h.resolver.table["b.test"] = None
        h.resolver.table["a.test"] = ["127.0.0.4"]
        await h.state.discovery.refresh()
        assert {b.address for b in h.state.pool.backends()} == {"127.0.0.4", "127.0.0.3"}


async def test_system_resolver_ip_literals_and_hosts_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.0.8 db-a db-b # comment\n")
    resolver = SystemResolver(hosts_file=hosts)
    assert await resolver.resolve("127.0.0.9") == ["127.0.0.9"]
    assert await resolver.resolve("[::1]") == ["::1"]
    assert await resolver.resolve("LOCALHOST") == ["127.0.0.1", "::1"]
    assert await resolver.resolve("db-b") == ["127.0.0.8"]


async def test_system_resolver_failure_is_lookup_failed(tmp_path: Path) -> None:
    from app.addresses import HostPort

    # A nameserver on loopback where nothing listens: fails fast, never leaves the machine.
    resolver = SystemResolver([HostPort("127.0.0.1", 9)], hosts_file=tmp_path / "none", lifetime=0.5)
    with pytest.raises(LookupFailed):
        await resolver.resolve("nothing.invalid")
