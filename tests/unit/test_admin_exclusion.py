"""Operator controls: exclusion endpoints, their token, and what exclusion means for routing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.exclusions import ExclusionStore
from tests.unit.harness import SERVICE, Harness

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_without_a_token_the_endpoints_explain_how_to_enable_them() -> None:
    h = Harness()
    async with h.running():
        for method, path in (("GET", "/admin/pool"), ("POST", "/admin/backends/127.0.0.2/exclude")):
            r = await h.client.request(method, path, headers=AUTH)
            assert r.status_code == 403 and "HYPERBYTEDB_PROXY_ADMIN_TOKEN" in r.json()["error"]
        assert not h.state.pool.get("127.0.0.2").excluded  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
)
async def test_missing_or_wrong_token_is_401(headers: dict[str, str]) -> None:
    h = Harness(admin_token=TOKEN)
    async with h.running():
        r = await h.client.post("/admin/backends/127.0.0.2/exclude", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert not h.backend("127.0.0.2").excluded


async def test_malformed_and_unknown_ips() -> None:
    h = Harness(admin_token=TOKEN)
    async with h.running():
        bad = await h.client.post("/admin/backends/not-an-ip/exclude", headers=AUTH)
        unknown = await h.client.post("/admin/backends/127.0.0.99/include", headers=AUTH)
    assert bad.status_code == 400 and "error" in bad.json()
    assert unknown.status_code == 404 and "127.0.0.99" in unknown.json()["error"]


async def test_excluded_backend_is_never_routed_and_survives_reresolve() -> None:
    h = Harness(admin_token=TOKEN)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        r = await h.client.post("/admin/backends/127.0.0.3/exclude", headers=AUTH)
        assert r.status_code == 200 and r.json()["excluded"] is True and r.json()["health"] == "active"
        for _ in range(6):
            await h.client.get("/ping")
        await h.state.discovery.refresh()  # same answer from DNS: the exclusion stays
        for _ in range(6):
            await h.client.get("/ping")
        assert h.calls_to("127.0.0.3") == 0 and len(h.backends.calls) == 12
        pool = (await h.client.get("/admin/pool", headers=AUTH)).json()
        assert {b["addr"]: (b["excluded"], b["routable"]) for b in pool}["127.0.0.3"] == (True, False)
        r = await h.client.post("/admin/backends/127.0.0.3/include", headers=AUTH)
        assert r.json()["excluded"] is False
        for _ in range(3):
            await h.client.get("/ping")
        assert h.calls_to("127.0.0.3") == 1


async def test_exclusion_is_dropped_when_the_ip_leaves_dns() -> None:
    h = Harness(admin_token=TOKEN)
    async with h.running():
        await h.client.post("/admin/backends/127.0.0.4/exclude", headers=AUTH)
        h.resolver.table[SERVICE] = ["127.0.0.2", "127.0.0.3"]
        await h.state.discovery.refresh()
        assert "127.0.0.4" not in h.state.exclusions
        h.resolver.table[SERVICE] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        await h.state.discovery.refresh()
        assert not h.backend("127.0.0.4").excluded  # a new pod on the same IP starts routable


async def test_only_excluded_backend_left_means_not_ready() -> None:
    h = Harness(ips=["127.0.0.2"], admin_token=TOKEN, hold_timeout_secs=0.1)
    async with h.running():
        await h.client.post("/admin/backends/127.0.0.2/exclude", headers=AUTH)
        assert (await h.client.get("/readyz")).status_code == 503
        assert (await h.client.get("/ping")).status_code == 503


def test_shared_store_propagates_between_workers(tmp_path: Path) -> None:
    path = tmp_path / "exclusions.json"
    worker_a, worker_b = ExclusionStore(path), ExclusionStore(path)
    worker_a.add("127.0.0.2")
    assert worker_b.reload() and "127.0.0.2" in worker_b
    assert not worker_b.reload()  # unchanged file: nothing to do
    worker_b.add("127.0.0.3")
    worker_a.discard(["127.0.0.2"])  # read-modify-write keeps b's change
    assert worker_b.reload() and worker_b.addresses == {"127.0.0.3"}


async def test_empty_bearer_never_matches_a_blank_configuration() -> None:
    h = Harness(admin_token="")
    async with h.running():
        r = await h.client.get("/admin/pool", headers={"Authorization": "Bearer "})
    assert r.status_code == 403
