from __future__ import annotations

import json
import logging

import pytest

from app.backend import Health
from app.logs import JsonFormatter, TextFormatter, redact
from tests.unit.harness import Harness

pytestmark = pytest.mark.anyio


async def test_healthz_readyz_and_backends() -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.3"])
    async with h.running():
        assert (await h.client.get("/healthz")).status_code == 200
        ready = await h.client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["routable_backends"] == 2
        view = (await h.client.get("/admin/backends")).json()
        first = view["backends"][0]
        assert {"address", "port", "health", "inflight", "consecutive_failures", "last_probe_at",
                "last_probe_latency_ms", "last_error"} <= set(first)  # fmt: skip
        assert first["health"] == "active" and first["port"] == 8086
        for backend in h.state.pool.backends():
            h.state.pool.set_health(backend, Health.DOWN, "test")
        assert (await h.client.get("/readyz")).status_code == 503
        h.set_health("127.0.0.2", Health.ACTIVE)
        h.state.begin_shutdown()
        assert (await h.client.get("/readyz")).status_code == 503
        assert (await h.client.get("/healthz")).status_code == 200
    assert not h.backends.calls  # admin routes never reach a backend


async def test_metrics_exposition() -> None:
    h = Harness(ips=["127.0.0.2"])
    async with h.running():
        text = (await h.client.get("/metrics")).text
    for name in (
        'hyperbytedb_proxy_requests_total{outcome="ok"}',
        'hyperbytedb_proxy_backends{health="active"} 1.0',
        "hyperbytedb_proxy_request_duration_seconds_bucket",
        "hyperbytedb_proxy_no_backend_total",
        "hyperbytedb_proxy_health_transitions_total",
        'hyperbytedb_proxy_retries_total{reason="drain_503"}',
        "hyperbytedb_proxy_probe_duration_seconds_bucket",
        "hyperbytedb_proxy_upstream_duration_seconds_bucket",
    ):
        assert name in text, name


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("GET /query?db=x&u=bob&p=hunter2&q=select", "hunter2"),
        ("query=p=hunter2&db=x", "hunter2"),
        ("headers={'authorization': 'Basic Ym9iOmh1bnRlcjI='}", "Ym9iOmh1bnRlcjI="),
        ("Authorization: Token abcdef123", "abcdef123"),
        ("q=CREATE USER bob WITH PASSWORD 'hunter2'", "hunter2"),
        ("q=CREATE%20USER%20bob%20WITH%20PASSWORD%20%27hunter2%27", "hunter2"),
        ("q=SET PASSWORD FOR bob = 'hunter2'", "hunter2"),
    ],
)
def test_redaction(line: str, secret: str) -> None:
    assert secret not in redact(line)


def test_json_and_text_formatters_carry_fields_and_redact() -> None:
    record = logging.LogRecord("hyperbytedb_proxy.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"path": "/query", "query": "p=hunter2", "status": 200}  # type: ignore[attr-defined]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "request" and entry["status"] == 200 and entry["level"] == "info"
    assert "hunter2" not in entry["query"]
    text = TextFormatter().format(record)
    assert "status=200" in text and "hunter2" not in text
