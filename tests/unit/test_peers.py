"""Fan-out of exclusions to peer replicas, and the start-up sync, against a fake fleet."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.discovery import LookupFailed
from app.main import create_app
from app.peers import FANOUT_HEADER, PeerFleet, fleet_wide
from app.settings import Settings, SettingsError, load_settings
from tests.unit.harness import SERVICE, FakeResolver, make_settings

pytestmark = pytest.mark.anyio

OWN, PEER_A, PEER_B = "10.0.0.1", "10.0.0.2", "10.0.0.3"
PATH = "/admin/backends/10.9.9.9/exclude"


def settings(**extra: str) -> Settings:
    env = {
        "HYPERBYTEDB_PROXY_BACKEND_SERVICE": "db.test",
        "HYPERBYTEDB_PROXY_PEER_SERVICE": "proxies.test",
        "HYPERBYTEDB_PROXY_SELF_IP": OWN,
        "HYPERBYTEDB_PROXY_LISTEN": "0.0.0.0:9086",
        "HYPERBYTEDB_PROXY_PEER_TIMEOUT_SECS": "5",
    }
    env.update({f"HYPERBYTEDB_PROXY_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env)


class Resolver:
    """Answers from a list of answers, the last one repeated."""

    def __init__(self, *answers: list[str] | None) -> None:
        self.answers = list(answers)

    async def resolve(self, name: str) -> list[str]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            raise LookupFailed(name)
        return list(answer)


class Fleet:
    """Fake peers: per-IP scripted statuses (the last repeated); 0 means connection refused."""

    def __init__(
        self,
        script: dict[str, list[int]],
        excluded: list[str] | None = None,
        *,
        starting: dict[str, list[str]] | None = None,
    ) -> None:
        self.script = script
        self.excluded = excluded or []
        self.starting = starting or {}  # peers still syncing themselves, with what they know so far
        self.calls: Counter[str] = Counter()
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.calls[host] += 1
        self.requests.append(request)
        statuses = self.script[host]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if status == 0:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/admin/exclusions":
            if host in self.starting:
                return httpx.Response(status, json={"excluded": self.starting[host], "synced": False})
            return httpx.Response(status, json={"excluded": self.excluded, "synced": True})
        return httpx.Response(status, json={"status": "excluded"})

    def peer_fleet(self, resolver: Resolver, **extra: str) -> PeerFleet:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
        return PeerFleet(settings(**extra), resolver, client)


async def test_every_peer_gets_the_change_with_the_callers_credentials_and_the_marker() -> None:
    fleet = Fleet({PEER_A: [200], PEER_B: [503, 0, 200]})
    report = await fleet.peer_fleet(Resolver([OWN, PEER_A, PEER_B])).fan_out("POST", PATH, "Bearer t")
    assert (report.applied, report.failed) == ([PEER_A, PEER_B], {})
    assert fleet.calls == {PEER_A: 1, PEER_B: 3}  # retried until acknowledged; never itself
    for request in fleet.requests:
        assert request.headers["authorization"] == "Bearer t"
        assert request.headers[FANOUT_HEADER] == "1"
        assert (request.method, request.url.path, request.url.port) == ("POST", PATH, 9086)


async def test_already_excluded_counts_as_applied() -> None:
    fleet = Fleet({PEER_A: [409]})
    report = await fleet.peer_fleet(Resolver([PEER_A])).fan_out("POST", PATH, None)
    assert (report.applied, report.failed) == ([PEER_A], {})


async def test_a_peer_that_leaves_dns_is_no_longer_waited_for() -> None:
    fleet = Fleet({PEER_A: [200], PEER_B: [0]})
    resolver = Resolver([PEER_A, PEER_B], [PEER_A, PEER_B], [PEER_A])
    report = await fleet.peer_fleet(resolver).fan_out("POST", PATH, None)
    assert (report.applied, report.failed) == ([PEER_A], {})
    assert fleet.calls[PEER_B] == 2


async def test_a_peer_that_never_acknowledges_is_reported_after_the_deadline() -> None:
    fleet = Fleet({PEER_A: [200], PEER_B: [503]})
    peers = fleet.peer_fleet(Resolver([PEER_A, PEER_B]), peer_timeout_secs="0.4")
    report = await peers.fan_out("POST", PATH, None)
    assert report.applied == [PEER_A]
    assert report.failed == {PEER_B: "HTTP 503"}
    assert 2 <= fleet.calls[PEER_B] <= 10


async def test_refused_credentials_are_not_retried() -> None:
    fleet = Fleet({PEER_A: [401]})
    report = await fleet.peer_fleet(Resolver([PEER_A])).fan_out("POST", PATH, "Bearer wrong")
    assert report.failed == {PEER_A: "HTTP 401"}
    assert fleet.calls[PEER_A] == 1


async def test_dns_silence_keeps_asking_the_last_known_peers() -> None:
    fleet = Fleet({PEER_A: [503, 200]})
    report = await fleet.peer_fleet(Resolver([PEER_A], None)).fan_out("POST", PATH, None)
    assert report.applied == [PEER_A]


def request(headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": PATH, "headers": raw, "query_string": b""}
    scope["path_params"] = {"ip": "10.9.9.9"}
    return Request(scope)


def local(status: int, body: dict[str, object]) -> tuple[list[int], object]:
    calls: list[int] = []

    async def endpoint(_: Request) -> Response:
        calls.append(1)
        return JSONResponse(body, status_code=status)

    return calls, endpoint


async def test_fleet_wide_answers_207_naming_the_peers_that_did_not_apply() -> None:
    fleet = Fleet({PEER_A: [200], PEER_B: [503]})
    peers = fleet.peer_fleet(Resolver([PEER_A, PEER_B]), peer_timeout_secs="0.3")
    calls, endpoint = local(200, {"status": "excluded", "ip": "10.9.9.9"})
    response = await fleet_wide(peers, endpoint)(request({"Authorization": "Bearer t"}))  # type: ignore[arg-type]
    assert response.status_code == 207
    body = json.loads(bytes(response.body))
    assert body["status"] == "excluded" and body["ip"] == "10.9.9.9"
    assert body["peers_applied"] == [PEER_A]
    assert body["peers_failed"] == [{"peer": PEER_B, "error": "HTTP 503"}]
    assert calls == [1]


async def test_fleet_wide_returns_the_local_answer_when_every_peer_applied() -> None:
    fleet = Fleet({PEER_A: [200]})
    _, endpoint = local(200, {"status": "excluded", "ip": "10.9.9.9"})
    response = await fleet_wide(fleet.peer_fleet(Resolver([PEER_A])), endpoint)(request())  # type: ignore[arg-type]
    assert response.status_code == 200
    assert json.loads(bytes(response.body)) == {"status": "excluded", "ip": "10.9.9.9"}
    assert fleet.calls[PEER_A] == 1


@pytest.mark.parametrize(
    ("status", "headers"),
    [(404, {}), (400, {}), (401, {}), (200, {FANOUT_HEADER: "1"})],
    ids=["unknown-ip", "bad-ip", "bad-token", "already-fanned-out"],
)
async def test_fleet_wide_does_not_repeat_refusals_or_fanned_out_calls(
    status: int, headers: dict[str, str]
) -> None:
    fleet = Fleet({PEER_A: [200]})
    _, endpoint = local(status, {"error": "x"})
    response = await fleet_wide(fleet.peer_fleet(Resolver([PEER_A])), endpoint)(request(headers))  # type: ignore[arg-type]
    assert response.status_code == status
    assert fleet.calls[PEER_A] == 0


async def test_start_up_sync_adopts_a_peers_exclusions_but_not_over_newer_changes() -> None:
    fleet = Fleet({PEER_A: [0], PEER_B: [200]}, excluded=["10.9.9.9", "10.9.9.8"])
    peers = fleet.peer_fleet(Resolver([PEER_A, PEER_B]))
    adopted: list[set[str]] = []
    peers.note_change("10.9.9.8")  # an include fanned out to us while we were syncing
    assert not peers.synced
    await peers.sync_at_start("t", lambda ips: adopted.append(set(ips)))
    assert peers.synced
    assert adopted == [{"10.9.9.9"}]
    asked = [r for r in fleet.requests if r.url.host == PEER_B]
    assert asked[0].headers["authorization"] == "Bearer t"


@pytest.mark.parametrize(("answer", "token"), [([OWN], "t"), (None, "t"), ([PEER_A], None)])
async def test_start_up_sync_ends_at_once_without_peers_or_token(
    answer: list[str] | None, token: str | None
) -> None:
    fleet = Fleet({PEER_A: [200]})
    peers = fleet.peer_fleet(Resolver(answer))
    await peers.sync_at_start(token, lambda ips: pytest.fail("nothing to adopt"))
    assert peers.synced
    assert not fleet.calls


async def test_start_up_sync_needs_no_token_when_the_admin_listener_is_open() -> None:
    fleet = Fleet({PEER_A: [200]}, excluded=["10.9.9.9"])
    peers = fleet.peer_fleet(Resolver([PEER_A]), admin_listen="127.0.0.1:9087")
    adopted: list[set[str]] = []
    await peers.sync_at_start(None, lambda ips: adopted.append(set(ips)))
    assert adopted == [{"10.9.9.9"}]
    (asked,) = fleet.requests
    assert "authorization" not in asked.headers and asked.headers[FANOUT_HEADER] == "1"
    assert asked.url.port == 9087  # the peer's admin listener


def test_peer_service_settings() -> None:
    assert settings(peer_service="  ").peer_service is None
    assert settings().peer_timeout_secs == 5
    with pytest.raises(SettingsError, match="HYPERBYTEDB_PROXY_PEER_SERVICE"):
        settings(peer_service="a.test,b.test")
    with pytest.raises(SettingsError, match="HYPERBYTEDB_PROXY_PEER_TIMEOUT_SECS"):
        settings(peer_timeout_secs="0")


async def test_readyz_waits_for_the_peers_exclusions_and_then_routes_around_them() -> None:
    """A starting replica is not ready until a peer told it what is excluded."""
    release, called = asyncio.Event(), asyncio.Event()
    asked: list[httpx.Request] = []

    async def peer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        called.set()
        await release.wait()
        return httpx.Response(200, json={"excluded": ["127.0.0.3"]})

    async def healthy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "pass"})

    app = create_app(
        make_settings(peer_service="proxies.test", admin_token="t", listen="127.0.0.9:8086"),
        forward_transport=httpx.MockTransport(healthy),
        probe_transport=httpx.MockTransport(healthy),
        peer_transport=httpx.MockTransport(peer),
        resolver=FakeResolver(
            {SERVICE: ["127.0.0.2", "127.0.0.3"], "proxies.test": ["127.0.0.9", "127.0.0.8"]}
        ),
    )
    state = app.state.proxy
    async with (
        state.running(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client,
    ):
        async with asyncio.timeout(5):
            await called.wait()
        waiting = await client.get("/readyz")
        assert waiting.status_code == 503
        assert waiting.json()["status"] == "syncing exclusions from peer replicas"
        assert [r.url.host for r in asked] == ["127.0.0.8"]  # never itself
        assert asked[0].headers["authorization"] == "Bearer t"

        release.set()
        for _ in range(500):  # the sync task finishes right after the answer; probes are immediate
            if state.peers.synced and state.pool.routable_count:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/readyz")).status_code == 200
        assert state.pool.get("127.0.0.3").excluded
        listed = await client.get("/admin/exclusions", headers={"Authorization": "Bearer t"})
        assert listed.json() == {"excluded": ["127.0.0.3"], "synced": True}


async def test_a_peer_service_that_never_resolves_is_reported_not_taken_for_no_peers() -> None:
    fleet = Fleet({PEER_A: [200]})
    peers = fleet.peer_fleet(Resolver(None), peer_timeout_secs="0.3")
    report = await peers.fan_out("POST", PATH, None)
    assert report.applied == []
    assert report.failed == {"proxies.test": "DNS lookup of the peer service failed"}


async def test_start_up_sync_prefers_a_peer_that_has_synced_itself() -> None:
    fleet = Fleet({PEER_A: [200], PEER_B: [200]}, excluded=["10.9.9.9"], starting={PEER_A: []})
    adopted: list[set[str]] = []
    await fleet.peer_fleet(Resolver([PEER_A, PEER_B])).sync_at_start(
        "t", lambda ips: adopted.append(set(ips))
    )
    assert adopted == [{"10.9.9.9"}]


async def test_start_up_sync_of_replicas_all_starting_takes_what_they_know() -> None:
    fleet = Fleet({PEER_A: [200], PEER_B: [200]}, starting={PEER_A: ["10.9.9.9"], PEER_B: ["10.9.9.8"]})
    adopted: list[set[str]] = []
    peers = fleet.peer_fleet(Resolver([PEER_A, PEER_B]))
    await peers.sync_at_start("t", lambda ips: adopted.append(set(ips)))
    assert adopted == [{"10.9.9.9", "10.9.9.8"}]
    assert sum(fleet.calls.values()) == 2  # one round: nobody knows more


async def test_start_up_sync_waits_for_a_synced_peer_while_one_is_unreachable() -> None:
    fleet = Fleet({PEER_A: [200], PEER_B: [0, 200]}, excluded=["10.9.9.9"], starting={PEER_A: []})
    adopted: list[set[str]] = []
    await fleet.peer_fleet(Resolver([PEER_A, PEER_B])).sync_at_start(
        "t", lambda ips: adopted.append(set(ips))
    )
    assert adopted == [{"10.9.9.9"}]
