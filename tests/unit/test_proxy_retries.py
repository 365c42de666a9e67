"""Retry rules: how many forwards, on which backends, for which failures."""

from __future__ import annotations

import httpx
import pytest

from app.backend import Health
from tests.unit.harness import BACKEND_IPS, Harness

pytestmark = pytest.mark.anyio


def _all_backends(h: Harness, *args: object, **kwargs: object) -> None:
    h.backends.route().mock(*args, **kwargs)


async def test_ok_response_is_relayed_from_one_backend() -> None:
    h = Harness()
    _all_backends(h, return_value=httpx.Response(204, headers={"X-Influxdb-Version": "0.8"}))
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"m v=1 1")
    assert r.status_code == 204 and r.headers["x-influxdb-version"] == "0.8"
    assert len(h.backends.calls) == 1
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "ok"}) == 1


async def test_round_robin_spreads_requests_over_active_backends() -> None:
    h = Harness()
    _all_backends(h, return_value=httpx.Response(200))
    async with h.running():
        for _ in range(6):
            await h.client.get("/ping")
    assert sorted(h.tried_hosts()) == sorted(BACKEND_IPS * 2)


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_errors_retry_on_distinct_backends_then_exhaust(status: int) -> None:
    h = Harness()
    _all_backends(h, return_value=httpx.Response(status))
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"m v=1 1")
    assert r.status_code == 503
    assert "error" in r.json() and r.headers["retry-after"]
    assert sorted(h.tried_hosts()) == sorted(BACKEND_IPS)  # 1 + MAX_RETRIES, each on a new backend
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "exhausted"}) == 1
    assert h.metric("hyperbytedb_proxy_retries_total", {"reason": f"status_{status}"}) == 2


async def test_max_retries_bounds_the_forwards() -> None:
    h = Harness(max_retries=0)
    _all_backends(h, return_value=httpx.Response(502))
    async with h.running():
        r = await h.client.get("/query?q=x")
    assert r.status_code == 503 and len(h.backends.calls) == 1


async def test_retry_succeeds_on_another_backend() -> None:
    h = Harness()
    h.backends.route(host="127.0.0.2").mock(return_value=httpx.Response(502))
    h.backends.route(host="127.0.0.3").mock(return_value=httpx.Response(502))
    h.backends.route(host="127.0.0.4").mock(return_value=httpx.Response(204))
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"m v=1 1")
    assert r.status_code == 204
    assert h.tried_hosts()[-1] == "127.0.0.4" and len(set(h.tried_hosts())) == len(h.tried_hosts())


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503),  # a syncing node's write answer: empty body
        httpx.Response(503, headers={"Retry-After": "5", "X-Hyperbytedb-Redirect": "127.0.0.3:8086"}),
        httpx.Response(503, headers={"Retry-After": "5"}, content=b"busy"),
        httpx.Response(503, json={"status": "warn", "message": "node is Draining, not accepting traffic"}),
        httpx.Response(503, json={"error": "node is Syncing"}),
    ],
    ids=["empty", "drain-headers", "retry-after", "warn-body", "syncing-body"],
)
async def test_drain_style_503_is_retried(response: httpx.Response) -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.3"])  # round-robin starts at the first address
    h.backends.route(host="127.0.0.2").mock(return_value=response)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"m v=1 1")
    assert r.status_code == 204
    assert h.tried_hosts() == ["127.0.0.2", "127.0.0.3"]
    assert h.metric("hyperbytedb_proxy_retries_total", {"reason": "drain_503"}) == 1


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503, json={"status": "fail", "message": "WAL writer is down"}),
        httpx.Response(500, json={"error": "boom"}),
        httpx.Response(400, json={"error": "unable to parse"}),
        httpx.Response(404, json={"error": "database not found"}),
        httpx.Response(401, json={"error": "authorization failed"}),
        httpx.Response(422, json={"error": "cardinality"}),
        httpx.Response(301, headers={"Location": "/elsewhere"}),
    ],
    ids=["503-fail", "500", "400", "404", "401", "422", "301"],
)
async def test_other_answers_are_relayed_unchanged_without_retry(response: httpx.Response) -> None:
    h = Harness()
    _all_backends(h, return_value=response)
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"m v=1 1")
    assert r.status_code == response.status_code
    assert r.content == response.content
    assert len(h.backends.calls) == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ReadError("reset"), httpx.RemoteProtocolError("closed"), httpx.WriteError("broken pipe")],
    ids=["read", "protocol", "write"],
)
async def test_transport_errors_after_sending_use_up_retries(error: Exception) -> None:
    h = Harness()
    _all_backends(h, side_effect=error)
    async with h.running():
        r = await h.client.get("/query?q=x")
    assert r.status_code == 503 and len(h.backends.calls) == 3
    assert h.metric("hyperbytedb_proxy_retries_total", {"reason": "transport"}) == 2
    assert all(b.health is Health.ACTIVE for b in h.state.pool.backends())  # not a connect failure


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow")])
async def test_connect_failure_ejects_backend_and_costs_no_retry(error: Exception) -> None:
    h = Harness(max_retries=0)
    h.backends.route(host="127.0.0.2").mock(side_effect=error)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"m v=1 1")
    assert r.status_code == 204  # served although MAX_RETRIES is 0
    assert h.backend("127.0.0.2").health is Health.DOWN
    assert h.tried_hosts()[0] == "127.0.0.2" and len(h.backends.calls) == 2
    assert h.metric("hyperbytedb_proxy_retries_total", {"reason": "connect"}) == 1


async def test_every_backend_refusing_holds_then_503() -> None:
    h = Harness(hold_timeout_secs=0.2)
    _all_backends(h, side_effect=httpx.ConnectError("refused"))
    async with h.running():
        r = await h.client.get("/query?q=x")
    assert r.status_code == 503 and "no healthy backend" in r.json()["error"]
    assert len(h.backends.calls) == 3  # one connect each, then held: never hammered
    assert h.metric("hyperbytedb_proxy_no_backend_total") == 1


async def test_read_timeout_is_504_and_not_retried_by_default() -> None:
    h = Harness()
    _all_backends(h, side_effect=httpx.ReadTimeout("slow query"))
    async with h.running():
        r = await h.client.get("/query?q=x")
    assert r.status_code == 504 and "error" in r.json()
    assert len(h.backends.calls) == 1
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "timeout"}) == 1


async def test_read_timeout_is_retried_when_enabled() -> None:
    h = Harness(retry_on_timeout="true")
    h.backends.route(host="127.0.0.2").mock(side_effect=httpx.ReadTimeout("slow"))
    h.backends.route().mock(return_value=httpx.Response(200, json={"results": []}))
    async with h.running():
        r = await h.client.get("/query?q=x")
    assert r.status_code == 200 and len(h.backends.calls) == 2
    assert h.metric("hyperbytedb_proxy_retries_total", {"reason": "timeout"}) == 1


async def test_single_backend_that_failed_is_retried_after_a_probe_interval() -> None:
    h = Harness(ips=["127.0.0.2"], health_interval_secs=0.05)
    h.backends.route().mock(side_effect=[httpx.Response(502), httpx.Response(204)])
    async with h.running():
        r = await h.client.post("/write?db=x", content=b"m v=1 1")
    assert r.status_code == 204 and len(h.backends.calls) == 2


async def test_retry_budget_denial_relays_the_last_failure() -> None:
    h = Harness(retry_budget_percent=0, retry_budget_min_per_sec=0.1)
    _all_backends(h, return_value=httpx.Response(502, json={"error": "upstream of the node failed"}))
    async with h.running():
        first = await h.client.get("/query?q=x")
        second = await h.client.get("/query?q=x")
    # The budget allows one retry in all: the first request uses it, then each
    # request gets the backend's own failure, not a proxy-made error.
    assert first.status_code == second.status_code == 502
    assert second.json() == {"error": "upstream of the node failed"}
    assert len(h.backends.calls) == 2 + 1
    assert h.metric("hyperbytedb_proxy_retries_denied_total") == 2
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "exhausted"}) == 2


async def test_retry_budget_denial_after_a_transport_error_is_502_json() -> None:
    h = Harness(retry_budget_percent=0, retry_budget_min_per_sec=0)
    _all_backends(h, side_effect=httpx.ReadError("connection reset"))
    async with h.running():
        r = await h.client.get("/query?q=x")
    assert r.status_code == 502 and "retry budget" in r.json()["error"]
    assert len(h.backends.calls) == 1


class _FailingBody(httpx.AsyncByteStream):
    """A body that yields ``parts`` and then fails with ``error``."""

    def __init__(self, error: Exception, *parts: bytes) -> None:
        self._error = error
        self._parts = parts

    async def __aiter__(self):  # type: ignore[override]
        for part in self._parts:
            yield part
        raise self._error


async def test_backend_dying_after_headers_before_any_body_byte_is_retried() -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.3"])
    h.backends.route(host="127.0.0.2").mock(
        return_value=httpx.Response(200, stream=_FailingBody(httpx.RemoteProtocolError("peer closed")))
    )
    h.backends.route().mock(return_value=httpx.Response(200, json={"results": []}))
    async with h.running():
        r = await h.client.get("/query?q=SELECT+1")
    assert r.status_code == 200 and r.json() == {"results": []}
    assert h.tried_hosts() == ["127.0.0.2", "127.0.0.3"]
    assert h.metric("hyperbytedb_proxy_retries_total", {"reason": "transport"}) == 1


@pytest.mark.parametrize(("retry_on_timeout", "status", "forwards"), [("false", 504, 1), ("true", 200, 2)])
async def test_no_first_body_byte_in_time_is_a_timeout(
    retry_on_timeout: str, status: int, forwards: int
) -> None:
    h = Harness(ips=["127.0.0.2", "127.0.0.3"], retry_on_timeout=retry_on_timeout)
    h.backends.route(host="127.0.0.2").mock(
        return_value=httpx.Response(200, stream=_FailingBody(httpx.ReadTimeout("no body")))
    )
    h.backends.route().mock(return_value=httpx.Response(200, json={"results": []}))
    async with h.running():
        r = await h.client.get("/query?q=SELECT+1")
    assert r.status_code == status and len(h.backends.calls) == forwards


async def test_failure_after_the_first_body_byte_cuts_the_client_connection() -> None:
    from app.proxy import UpstreamAborted

    h = Harness(ips=["127.0.0.2"])
    h.backends.route().mock(
        return_value=httpx.Response(200, stream=_FailingBody(httpx.ReadError("reset"), b'{"results":'))
    )
    async with h.running():
        with pytest.raises(UpstreamAborted):  # a truncated body, never a silently short "complete" one
            await h.client.get("/query?q=SELECT+1")
    assert len(h.backends.calls) == 1
    assert h.metric("hyperbytedb_proxy_requests_total", {"outcome": "fatal"}) == 1
