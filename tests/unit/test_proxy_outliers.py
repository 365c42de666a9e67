"""Outlier detection and believed drains, through the whole proxy with mocked backends."""

from __future__ import annotations

import logging

import httpx
import pytest

from app.backend import Health
from app.settings import SettingsError, load_settings, unknown_variables
from tests.unit.harness import Harness, make_settings

pytestmark = pytest.mark.anyio

SICK = "127.0.0.2"


def _gray_node(h: Harness, sick: httpx.Response | Exception) -> None:
    """SICK fails every request (its probe stays happy); the others answer 200."""
    if isinstance(sick, Exception):
        h.backends.route(host=SICK).mock(side_effect=sick)
    else:
        h.backends.route(host=SICK).mock(return_value=sick)
    h.backends.route().mock(return_value=httpx.Response(200, json={"results": []}))


@pytest.mark.parametrize(
    ("sick", "reason", "label"),
    [
        (httpx.Response(502), "outlier: 5 consecutive 502", "status_502"),
        (httpx.ReadError("connection reset by peer"), "outlier: 5 consecutive transport errors", "transport"),
    ],
)
async def test_a_gray_node_is_ejected_after_five_failures_and_clients_see_none(
    sick: httpx.Response | Exception, reason: str, label: str, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness()
    _gray_node(h, sick)
    caplog.set_level(logging.INFO, logger="hyperbytedb_proxy.outlier")
    async with h.running():
        statuses = [(await h.client.get("/query?q=x")).status_code for _ in range(60)]
        view = {b["address"]: b for b in (await h.client.get("/admin/backends")).json()["backends"]}
        metrics = (await h.client.get("/metrics")).text
    assert statuses == [200] * 60
    assert h.calls_to(SICK) == 5  # then ejected: never tried again
    sick_view = view[SICK]
    assert sick_view["routable"] is False and sick_view["health"] == "active"
    assert sick_view["ejection"]["reason"] == reason and sick_view["ejection"]["until"]
    assert h.metric("hyperbytedb_proxy_outlier_ejections_total", {"reason": label}) == 1
    assert 'hyperbytedb_proxy_backends{health="ejected"} 1.0' in metrics
    assert 'hyperbytedb_proxy_backends{health="active"} 2.0' in metrics
    assert h.state.pool.routable_count == 2
    assert any(r.message == "backend ejected" for r in caplog.records)


async def test_an_ejected_node_returns_when_its_time_is_up() -> None:
    h = Harness(outlier_ejection_secs=0.2)
    _gray_node(h, httpx.Response(502))
    async with h.running():
        for _ in range(10):
            await h.client.get("/query?q=x")
        backend = h.backend(SICK)
        assert backend.ejection is not None
        await h.wait_routable(3, timeout=5)
        assert backend.ejection is None and backend.routable


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"error": "disk failure"}),
        httpx.Response(503, json={"status": "fail", "message": "WAL writer down"}),
    ],
)
async def test_node_errors_are_relayed_unchanged_but_eject_after_five(answer: httpx.Response) -> None:
    h = Harness()
    _gray_node(h, answer)
    async with h.running():
        answers = [await h.client.post("/write?db=x", content=b"m v=1") for _ in range(30)]
    failed = [r for r in answers if r.status_code != 200]
    assert len(failed) == 5  # a node with a broken disk costs clients at most 5 failed writes
    assert all(r.status_code == answer.status_code and r.content == answer.content for r in failed)
    assert h.calls_to(SICK) == 5 and h.backend(SICK).ejection is not None
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "ok"}) == 30
    assert h.metric("hyperbytedb_proxy_outlier_ejections_total", {"reason": "status_5xx"}) == 1


async def test_a_success_between_failures_keeps_a_node_in() -> None:
    h = Harness()
    answers = iter([httpx.Response(502), httpx.Response(502), httpx.Response(200)] * 10)
    h.backends.route(host=SICK).mock(side_effect=lambda request: next(answers))
    h.backends.route().mock(return_value=httpx.Response(200))
    async with h.running():
        statuses = [(await h.client.get("/query?q=x")).status_code for _ in range(45)]
    assert set(statuses) == {200}
    assert h.backend(SICK).ejection is None


async def test_a_drain_503_is_believed_at_once() -> None:
    h = Harness()
    drain = httpx.Response(503, headers={"Retry-After": "5", "X-Hyperbytedb-Redirect": "127.0.0.3:8086"})
    _gray_node(h, drain)
    async with h.running():
        statuses = [(await h.client.post("/write?db=x", content=b"m v=1")).status_code for _ in range(30)]
        backend = h.backend(SICK)
        assert backend.health is Health.DRAINING and backend.ejection is None
        assert "drain 503" in backend.transitions[-1].reason
        # The next probe decides again: /health says 200, so it serves again.
        await h.state.health.probe(backend)
        assert backend.health is Health.ACTIVE
    assert statuses == [200] * 30
    assert h.calls_to(SICK) == 1
    assert h.metric("hyperbytedb_proxy_retries_total", {"reason": "drain_503"}) == 1


async def test_with_all_nodes_failing_never_all_are_ejected() -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"])
    h.backends.route().mock(return_value=httpx.Response(502))
    async with h.running():
        for _ in range(40):
            await h.client.get("/query?q=x")
        ejected = [b for b in h.state.pool.backends() if b.ejection is not None]
    assert len(ejected) == 2  # 50 % of 4
    assert h.state.pool.routable_count == 2


async def test_outlier_detection_can_be_turned_off() -> None:
    h = Harness(outlier_consecutive_failures=0)
    _gray_node(h, httpx.Response(502))
    async with h.running():
        for _ in range(30):
            await h.client.get("/query?q=x")
    assert h.backend(SICK).ejection is None and h.calls_to(SICK) > 5  # kept receiving requests


async def test_least_request_is_selected_by_setting() -> None:
    h = Harness(lb_policy="least_request")
    h.backends.route().mock(return_value=httpx.Response(200))
    async with h.running():
        h.backend(SICK).inflight = 100  # as if it were stuck on slow queries
        for _ in range(30):
            await h.client.get("/query?q=x")
        h.backend(SICK).inflight = 0
    assert h.calls_to(SICK) == 0


def test_routing_settings_defaults() -> None:
    s = make_settings()
    outlier = (s.outlier_consecutive_failures, s.outlier_ejection_secs, s.outlier_max_ejected_percent)
    assert outlier == (5, 30, 50)
    assert (s.lb_policy, s.retry_budget_min_per_sec) == ("round_robin", 10)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HYPERBYTEDB_PROXY_LB_POLICY", "random", "'round_robin' or 'least_request'"),
        ("HYPERBYTEDB_PROXY_OUTLIER_CONSECUTIVE_FAILURES", "-1", "greater than or equal to 0"),
        ("HYPERBYTEDB_PROXY_OUTLIER_EJECTION_SECS", "0", "greater than 0"),
        ("HYPERBYTEDB_PROXY_OUTLIER_MAX_EJECTED_PERCENT", "150", "less than or equal to 100"),
        ("HYPERBYTEDB_PROXY_RETRY_BUDGET_MIN_PER_SEC", "lots", "valid number"),
    ],
)
def test_bad_routing_settings_name_variable_and_value(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"HYPERBYTEDB_PROXY_BACKEND_SERVICE": "db", variable: value})
    (line,) = err.value.problems
    assert line.startswith(f"{variable}={value!r} is invalid: ") and expected in line


def test_the_old_budget_floor_setting_is_gone() -> None:
    assert unknown_variables({"HYPERBYTEDB_PROXY_RETRY_BUDGET_MIN_RETRIES": "10"}) == [
        "HYPERBYTEDB_PROXY_RETRY_BUDGET_MIN_RETRIES"
    ]
