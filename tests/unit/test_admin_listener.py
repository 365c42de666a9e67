"""The separate admin listener: routes split by the port a connection arrived on."""

from __future__ import annotations

import httpx
import pytest

from app.settings import SettingsError
from tests.unit.harness import Harness, make_settings

pytestmark = pytest.mark.anyio

PUBLIC = "http://127.0.0.1:8086"
ADMIN = "http://127.0.0.1:8087"


def _client(h: Harness, base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url=base)


async def test_admin_routes_only_on_the_admin_port_and_proxying_only_on_the_public_one() -> None:
    h = Harness(listen="127.0.0.1:8086", admin_listen="127.0.0.1:8087")
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running(), _client(h, PUBLIC) as public, _client(h, ADMIN) as admin:
        for path in ("/healthz", "/readyz", "/metrics", "/admin", "/admin/backends", "/admin/pool"):
            assert (await public.get(path)).status_code == 404, path
            assert (await admin.get(path)).status_code == 200, path
        assert (await public.get("/ping")).status_code == 204
        missing = await admin.get("/ping")
        assert missing.status_code == 404 and missing.json() == {"error": "not found"}
        # No token configured: the admin listener's network is the boundary.
        assert (await admin.post("/admin/backends/127.0.0.2/exclude")).json()["status"] == "excluded"
    assert [call.request.extensions["target"] for call in h.backends.calls] == [b"/ping"]


async def test_a_configured_token_is_required_on_the_admin_listener_too() -> None:
    h = Harness(listen="127.0.0.1:8086", admin_listen="127.0.0.1:8087", admin_token="t0ken")
    async with h.running(), _client(h, ADMIN) as admin:
        denied = await admin.post("/admin/backends/127.0.0.2/exclude")
        allowed = await admin.post(
            "/admin/backends/127.0.0.2/exclude", headers={"Authorization": "Bearer t0ken"}
        )
        pool = await admin.get("/admin/pool")
        healthz = await admin.get("/healthz")
    assert denied.status_code == 401 and allowed.status_code == 200
    assert pool.status_code == 401 and healthz.status_code == 200


def test_the_admin_port_must_differ_from_the_public_port() -> None:
    with pytest.raises(SettingsError, match=r"HYPERBYTEDB_PROXY_ADMIN_LISTEN.*HYPERBYTEDB_PROXY_LISTEN"):
        make_settings(listen="0.0.0.0:8086", admin_listen="127.0.0.1:8086")


def test_tls_key_and_certificate_go_together() -> None:
    with pytest.raises(SettingsError, match="HYPERBYTEDB_PROXY_TLS_KEY_FILE"):
        make_settings(tls_cert_file="/etc/hostname")
    with pytest.raises(SettingsError, match="HYPERBYTEDB_PROXY_BACKEND_CLIENT_KEY_FILE"):
        make_settings(backend_client_key_file="/etc/hostname")
