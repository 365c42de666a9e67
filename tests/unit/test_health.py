"""Probe answers map to health; transitions are logged once and counted."""

from __future__ import annotations

import logging

import httpx
import pytest

from app.backend import Health
from tests.unit.harness import Harness

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("answer", "health"),
    [
        (httpx.Response(200, json={"status": "pass"}), Health.ACTIVE),
        (httpx.Response(204), Health.ACTIVE),
        (httpx.Response(503, json={"status": "warn", "message": "node is Draining"}), Health.DRAINING),
        (httpx.Response(503, json={"status": "fail", "message": "WAL writer down"}), Health.DRAINING),
        (httpx.Response(500), Health.DOWN),
        (httpx.Response(404), Health.DOWN),
        (httpx.ConnectError("refused"), Health.DOWN),
        (httpx.ReadTimeout("slow"), Health.DOWN),
    ],
)
async def test_first_probe_answer_sets_health(answer: httpx.Response | Exception, health: Health) -> None:
    h = Harness(ips=["127.0.0.2"])
    h.script_probes("127.0.0.2", answer)
    async with h.running(wait_active=0):
        backend = h.backend("127.0.0.2")
        await h.state.health.probe(backend)  # the discovery-time probe may still be in flight
        assert backend.health is health
        assert backend.last_probe_at is not None and backend.last_probe_latency is not None
        assert (backend.last_error is None) == (health is Health.ACTIVE)


async def test_unknown_until_first_probe() -> None:
    h = Harness(ips=["127.0.0.2"])
    h.state.pool.reconcile(["127.0.0.2"])
    assert h.backend("127.0.0.2").health is Health.UNKNOWN
    assert h.state.pool.pick() is None


async def test_probe_path_and_timeout_are_configurable() -> None:
    h = Harness(ips=["127.0.0.2"], health_path="/health/ready", health_timeout_ms=250)
    async with h.running():
        probe = h.probes.calls.last.request
    assert probe.url == "http://127.0.0.2:8086/health/ready"
    assert probe.extensions["timeout"]["read"] == 0.25


async def test_transitions_are_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(ips=["127.0.0.2"])
    ok, drain = httpx.Response(200), httpx.Response(503, json={"status": "warn"})
    h.script_probes("127.0.0.2", ok, ok, drain, drain, ok)
    caplog.set_level(logging.INFO, logger="hyperbytedb_proxy")
    async with h.running():
        backend = h.backend("127.0.0.2")
        for _ in range(4):
            await h.state.health.probe(backend)
    changes = [r for r in caplog.records if r.getMessage() == "backend health changed"]
    assert [(r.fields["from"], r.fields["to"]) for r in changes] == [  # type: ignore[attr-defined]
        ("unknown", "active"),
        ("active", "draining"),
        ("draining", "active"),
    ]
    assert h.metric("hyperbytedb_proxy_health_transitions_total", {"from": "active", "to": "draining"}) == 1


async def test_rise_and_fall_thresholds_damp_flapping() -> None:
    h = Harness(ips=["127.0.0.2"], health_rise=2, health_fall=3)
    ok, bad = httpx.Response(200), httpx.Response(500)
    h.script_probes("127.0.0.2", ok, bad, bad, bad, ok, ok)
    async with h.running():
        backend = h.backend("127.0.0.2")
        assert backend.health is Health.ACTIVE  # the first answer counts at once
        for expected in (Health.ACTIVE, Health.ACTIVE, Health.DOWN, Health.DOWN, Health.ACTIVE):
            await h.state.health.probe(backend)
            assert backend.health is expected


async def test_probe_loop_runs_every_interval() -> None:
    import asyncio

    h = Harness(ips=["127.0.0.2", "127.0.0.3"], health_interval_secs=0.05)
    async with h.running():
        await asyncio.sleep(0.3)
    per_backend = len(h.probes.calls) / 2
    assert 4 <= per_backend <= 10


async def test_passive_ejection_needs_rise_good_probes_to_return() -> None:
    h = Harness(ips=["127.0.0.2"], health_rise=2)
    async with h.running():
        backend = h.backend("127.0.0.2")
        await h.state.health.probe(backend)
        assert backend.health is Health.ACTIVE and backend.consecutive_successes >= 2
        h.state.pool.eject(backend, "connect refused")
        await h.state.health.probe(backend)
        assert backend.health is Health.DOWN  # one good probe is not enough after an ejection
        await h.state.health.probe(backend)
        assert backend.health is Health.ACTIVE
