"""The simulated node behaves as HyperbyteDB does (in-process, no sockets)."""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from sim.lineproto import LineProtocolError, parse_lines
from sim.node import NodeApp, create_node_app, read_points, stream_chunk

pytestmark = pytest.mark.anyio

NOT_SERVING = ["syncing", "joining", "draining", "leaving"]


async def set_state(client: httpx.AsyncClient, state: str, **extra: object) -> None:
    response = await client.post("/_sim/state", json={"state": state, **extra})
    assert response.status_code == 200, response.text


async def count(client: httpx.AsyncClient) -> int:
    response = await client.get("/_sim/points", params={"count_only": "1"})
    return int(response.json()["count"])


# --------------------------------------------------------------------------- health and ping


async def test_health_active(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "pass", "message": "ready for queries and writes"}


@pytest.mark.parametrize("state", NOT_SERVING)
async def test_health_not_serving_is_warn_with_capitalised_state(
    client: httpx.AsyncClient, state: str
) -> None:
    await set_state(client, state)
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json() == {
        "status": "warn",
        "message": f"node is {state.capitalize()}, not accepting traffic",
    }


async def test_health_failed(client: httpx.AsyncClient) -> None:
    await set_state(client, "failed")
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "fail", "message": "WAL writer is down"}


async def test_health_head_has_status_but_no_body(client: httpx.AsyncClient) -> None:
    assert (await client.head("/health")).status_code == 200
    await set_state(client, "draining")
    response = await client.head("/health")
    assert response.status_code == 503
    assert response.content == b""


@pytest.mark.parametrize(("state", "status"), [("active", 200), ("draining", 503), ("failed", 503)])
async def test_health_ready(client: httpx.AsyncClient, state: str, status: int) -> None:
    await set_state(client, state)
    response = await client.get("/health/ready")
    assert response.status_code == status
    assert response.json()["status"] == ("pass" if status == 200 else "fail")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_ping_is_204_without_body_and_carries_influx_headers(
    client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(method, "/ping")
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["x-influxdb-version"].startswith("hyperbytedb-")
    assert response.headers["x-influxdb-build"] == "OSS"
    assert response.headers["x-sim-node"] == "node-t"
    assert response.headers["request-id"] == response.headers["x-request-id"]
    uuid.UUID(response.headers["request-id"])


async def test_request_ids_differ_per_request(client: httpx.AsyncClient) -> None:
    first, second = await client.get("/ping"), await client.get("/ping")
    assert first.headers["request-id"] != second.headers["request-id"]


async def test_unknown_path_is_json_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert "error" in response.json()
    assert response.headers["x-influxdb-version"]


# --------------------------------------------------------------------------- write


async def test_write_then_query_count(client: httpx.AsyncClient) -> None:
    body = '# comment\n\ncpu,host=a value=1 1700000000\ncpu,host=b value=2,s="x y" 1700000000\nmem v=1i\n'
    response = await client.post("/write", params={"db": "db0", "precision": "s"}, content=body)
    assert response.status_code == 204, response.text
    assert response.content == b""
    query = await client.get("/query", params={"db": "db0", "q": "SELECT count(*) FROM cpu"})
    assert query.status_code == 200
    assert query.json() == {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {"name": "cpu", "columns": ["time", "count"], "values": [["1970-01-01T00:00:00Z", 2]]}
                ],
            }
        ]
    }
    with_epoch = await client.get(
        "/query", params={"db": "db0", "epoch": "ms", "q": 'SELECT * FROM "db0"."autogen"."mem"'}
    )
    assert with_epoch.json()["results"][0]["series"][0]["values"] == [[0, 1]]
    other_db = await client.get("/query", params={"db": "db1", "q": "SELECT count(*) FROM cpu"})
    assert other_db.json() == {"results": [{"statement_id": 0}]}


async def test_same_point_twice_is_one_point(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        response = await client.post("/write?db=d", content=b"cpu,b=2,a=1 v=1 5\ncpu,a=1,b=2 v=1 5")
        assert response.status_code == 204
    assert await count(client) == 1


async def test_write_gzip(client: httpx.AsyncClient) -> None:
    body = gzip.compress(b"cpu,host=a v=1 1\ncpu,host=a v=2 2\n")
    response = await client.post("/write?db=d", content=body, headers={"content-encoding": "gzip"})
    assert response.status_code == 204, response.text
    assert await count(client) == 2


async def test_write_bad_gzip_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/write?db=d", content=b"not gzip", headers={"content-encoding": "gzip"})
    assert response.status_code == 400
    assert "gzip" in response.json()["error"]


@pytest.mark.parametrize(
    "line",
    ["cpu", "cpu value=", "cpu value=abc", "cpu,host value=1", "cpu value=1 12x", 'cpu s="open', ",t=1 v=1"],
)
async def test_write_malformed_line_is_400_json_and_stores_nothing(
    client: httpx.AsyncClient, line: str
) -> None:
    body = f"ok v=1 1\n{line}\n"
    response = await client.post("/write?db=d", content=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert "unable to parse" in response.json()["error"]
    assert await count(client) == 0


async def test_write_without_db_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/write", content=b"cpu v=1")
    assert response.status_code == 400
    assert response.json() == {"error": "database is required"}


async def test_write_over_limit_is_413() -> None:
    app = create_node_app(max_body_bytes=1000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n") as client:
        big = b"cpu v=1 1\n" * 200
        response = await client.post("/write?db=d", content=big)
        assert response.status_code == 413
        bomb = gzip.compress(big)
        response = await client.post("/write?db=d", content=bomb, headers={"content-encoding": "gzip"})
        assert response.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(200):
                yield b"cpu v=1 1\n"

        streamed = await client.post("/write?db=d", content=chunks())
        assert streamed.status_code == 413


@pytest.mark.parametrize("state", ["draining", "leaving"])
async def test_write_while_draining_is_empty_503_with_redirect(client: httpx.AsyncClient, state: str) -> None:
    await set_state(client, state)
    response = await client.post("/write?db=d", content=b"cpu v=1")
    assert response.status_code == 503
    assert response.content == b""
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-hyperbytedb-redirect"] == "127.0.0.3:8086"
    assert response.headers["x-influxdb-version"]
    assert await count(client) == 0


@pytest.mark.parametrize("state", ["syncing", "joining"])
async def test_write_while_syncing_is_empty_503(client: httpx.AsyncClient, state: str) -> None:
    await set_state(client, state)
    response = await client.post("/write?db=d", content=b"cpu v=1")
    assert response.status_code == 503
    assert response.content == b""
    assert "retry-after" not in response.headers
    assert "x-hyperbytedb-redirect" not in response.headers


async def test_write_while_failed_is_500_json(client: httpx.AsyncClient) -> None:
    await set_state(client, "failed")
    response = await client.post("/write?db=d", content=b"cpu v=1")
    assert response.status_code == 500
    assert response.json() == {"error": "WAL writer is down"}


async def test_redirect_header_absent_without_peer() -> None:
    app = create_node_app(state="draining")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n") as client:
        response = await client.post("/write?db=d", content=b"cpu v=1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "x-hyperbytedb-redirect" not in response.headers


# --------------------------------------------------------------------------- query


@pytest.mark.parametrize("state", NOT_SERVING)
async def test_query_while_not_serving_is_503_json(client: httpx.AsyncClient, state: str) -> None:
    await set_state(client, state)
    response = await client.get("/query", params={"q": "SHOW DATABASES"})
    assert response.status_code == 503
    assert response.json() == {"error": f"node is {state.capitalize()}, not accepting traffic"}


async def test_query_missing_q_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/query")
    assert response.status_code == 400
    assert "q" in response.json()["error"]


async def test_query_post_form_and_show_databases(client: httpx.AsyncClient) -> None:
    await client.post("/write?db=alpha", content=b"cpu v=1 1")
    response = await client.post("/query", data={"q": "CREATE DATABASE beta; SHOW DATABASES"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0] == {"statement_id": 0}
    assert results[1]["series"][0]["values"] == [["alpha"], ["beta"]]


async def test_query_chunked_streams_one_json_object_per_chunk(client: httpx.AsyncClient) -> None:
    await client.post("/write?db=d", content=b"cpu v=1 1\ncpu v=1 2")
    params = {"db": "d", "chunked": "true", "q": "SHOW DATABASES; SELECT count(*) FROM cpu; SELECT 1"}
    response = await client.get("/query", params=params)
    assert response.status_code == 200
    assert "content-length" not in response.headers
    chunks = [json.loads(line) for line in response.text.splitlines()]
    assert [chunk["results"][0]["statement_id"] for chunk in chunks] == [0, 1, 2]
    assert chunks[1]["results"][0]["series"][0]["values"][0][1] == 2


async def test_query_works_while_failed(client: httpx.AsyncClient) -> None:
    await set_state(client, "failed")
    response = await client.get("/query", params={"q": "SHOW DATABASES"})
    assert response.status_code == 200


# --------------------------------------------------------------------------- states and controls


async def test_sync_secs_turns_active_by_the_clock() -> None:
    now = [100.0]
    app = create_node_app(state="syncing", sync_secs=5, clock=lambda: now[0])
    assert app.state == "syncing"
    now[0] = 104.9
    assert app.state == "syncing"
    now[0] = 105.0
    assert app.state == "active"


async def test_sync_secs_via_control(client: httpx.AsyncClient, node_app: NodeApp) -> None:
    await set_state(client, "joining", sync_secs=0)
    assert (await client.get("/health")).status_code == 200
    assert node_app.state == "active"


async def test_state_control_rejects_unknown_state(client: httpx.AsyncClient) -> None:
    response = await client.post("/_sim/state", json={"state": "sleepy"})
    assert response.status_code == 400
    assert (await client.get("/_sim/state")).json()["state"] == "active"


async def test_hang_stalls_data_requests_but_not_controls(client: httpx.AsyncClient) -> None:
    await set_state(client, "hang")
    with anyio.move_on_after(0.3) as scope:
        await client.get("/health")
    assert scope.cancelled_caught, "a hung node must not answer /health"
    assert (await client.get("/_sim/state")).json()["state"] == "hang"
    assert (await client.get("/_sim/echo")).status_code == 200

    results: list[int] = []

    async def stalled_ping() -> None:
        results.append((await client.get("/ping")).status_code)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stalled_ping)
        await anyio.sleep(0.1)
        assert results == []
        await set_state(client, "active")  # un-hang: the stalled request now completes
    assert results == [204]


async def test_fail_injection_next_n_matching_requests(client: httpx.AsyncClient) -> None:
    spec = {
        "status": 502,
        "count": 2,
        "body": "bad gateway",
        "headers": {"X-Custom": "1"},
        "paths": ["/write"],
    }
    assert (await client.post("/_sim/fail", json=spec)).status_code == 200
    assert (await client.get("/ping")).status_code == 204  # other paths untouched
    for _ in range(2):
        response = await client.post("/write?db=d", content=b"cpu v=1 1")
        assert response.status_code == 502
        assert response.text == "bad gateway"
        assert response.headers["x-custom"] == "1"
        assert response.headers["x-sim-node"] == "node-t"
    assert (await client.post("/write?db=d", content=b"cpu v=1 1")).status_code == 204
    assert (await client.get("/_sim/fail")).json() == {"rules": []}


async def test_fail_injection_until_cleared_with_empty_503(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/fail", json={"status": 503, "count": None, "methods": ["GET"]})
    for _ in range(3):
        response = await client.get("/ping")
        assert response.status_code == 503
        assert response.content == b""
    assert (await client.head("/ping")).status_code == 204
    await client.delete("/_sim/fail")
    assert (await client.get("/ping")).status_code == 204


async def test_delay_injection(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/delay", json={"secs": 0.3, "count": 1, "paths": ["/query"]})
    started = time.monotonic()
    assert (await client.get("/ping")).status_code == 204
    assert time.monotonic() - started < 0.25
    started = time.monotonic()
    assert (await client.get("/query", params={"q": "SHOW DATABASES"})).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await client.get("/query", params={"q": "SHOW DATABASES"})
    assert time.monotonic() - started < 0.25


async def test_echo_reports_the_request_exactly(client: httpx.AsyncClient) -> None:
    body = bytes(range(256))
    headers = [("X-Dup", "one"), ("X-Dup", "two"), ("Authorization", "Token abc")]
    response = await client.put("/_sim/echo/a%2Fb/c?x=1&x=2&y=%20", content=body, headers=headers)
    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == "PUT"
    assert echo["raw_path"] == "/_sim/echo/a%2Fb/c"
    assert echo["query_string"] == "x=1&x=2&y=%20"
    assert [pair for pair in echo["headers"] if pair[0] == "x-dup"] == [["x-dup", "one"], ["x-dup", "two"]]
    assert ["authorization", "Token abc"] in echo["headers"]
    assert base64.b64decode(echo["body_b64"]) == body
    assert echo["body_len"] == 256


async def test_headers_endpoint_keeps_duplicates(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/_sim/headers", params=[("h", "X-A:1"), ("h", "X-A: 2"), ("h", "Set-Cookie:c=d")]
    )
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.headers.get_list("x-a") == ["1", "2"]
    assert response.headers["set-cookie"] == "c=d"
    bad = await client.get("/_sim/headers", params={"h": "no colon"})
    assert bad.status_code == 400


async def test_stream_has_exact_length_and_pattern(client: httpx.AsyncClient) -> None:
    size = 1_000_003
    response = await client.get("/_sim/stream", params={"bytes": size, "chunk": 65_000})
    assert response.status_code == 200
    assert "content-length" not in response.headers
    assert len(response.content) == size
    assert response.content == (b"0123456789abcdef" * (size // 16 + 1))[:size]
    assert stream_chunk(7, 5) == b"789ab"


async def test_requests_counter_excludes_control_calls(client: httpx.AsyncClient) -> None:
    await client.get("/ping")
    await client.get("/ping")
    await client.post("/write?db=d", content=b"cpu v=1")
    await client.get("/_sim/state")
    counted = (await client.get("/_sim/requests")).json()
    assert counted == {"total": 3, "paths": {"/ping": 2, "/write": 1}}
    await client.delete("/_sim/requests")
    assert (await client.get("/_sim/requests")).json()["total"] == 0


async def test_points_listing_and_clear(client: httpx.AsyncClient) -> None:
    await client.post("/write?db=a", content=b"cpu v=1 1")
    await client.post("/write?db=b", content=b"cpu v=1 1\ncpu v=1 2")
    everything = (await client.get("/_sim/points")).json()
    assert everything["count"] == 3
    assert sorted(everything["points"]) == ["cpu v=1 1", "cpu v=1 1", "cpu v=1 2"]
    only_b = (await client.get("/_sim/points", params={"db": "b", "count_only": "1"})).json()
    assert only_b == {"count": 2}
    await client.delete("/_sim/points")
    assert await count(client) == 0


async def test_reset_clears_rules_and_state(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/fail", json={"status": 500, "count": None})
    await set_state(client, "draining")
    await client.post("/_sim/reset")
    assert (await client.get("/health")).status_code == 200


# --------------------------------------------------------------------------- persistence and parsing


async def test_points_persist_across_app_instances(tmp_path: Path) -> None:
    first = create_node_app(data_dir=tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://n") as client:
        await client.post("/write?db=d&rp=r", content=b"cpu,host=a v=1 1\ncpu,host=a v=1 2\n")
    first.store.close()
    with (tmp_path / "points.lp").open("a") as handle:
        handle.write("d\tr\tcpu,host=torn v=")  # what a SIGKILL mid-append leaves behind
    second = create_node_app(data_dir=tmp_path)
    assert second.store.count() == 2
    assert sorted(read_points(tmp_path)) == ["cpu,host=a v=1 1", "cpu,host=a v=1 2"]
    second.store.close()


def test_line_protocol_escapes_and_precision() -> None:
    points = parse_lines(r'my\ m,ta\,g=v\ 1 s="a \"b\", c",f=1.5e3 3', precision="ms", now_ns=0)
    assert points[0].measurement == "my m"
    assert points[0].timestamp_ns == 3_000_000
    assert parse_lines("cpu v=t", now_ns=42)[0].timestamp_ns == 42
    with pytest.raises(LineProtocolError):
        parse_lines("cpu v=1", precision="fortnight", now_ns=0)


@pytest.mark.parametrize(
    "spec",
    [{"status": 502, "count": 0}, {"status": 502, "headers": ["x"]}, {"secs": -1}, {"secs": "soon"}],
)
async def test_bad_injection_rules_are_400(client: httpx.AsyncClient, spec: dict[str, object]) -> None:
    path = "/_sim/delay" if "secs" in spec else "/_sim/fail"
    response = await client.post(path, json=spec)
    assert response.status_code == 400, response.text
    assert (await client.get(path)).json() == {"rules": []}
