"""Forged forwarding headers: replaced for untrusted peers, kept and appended to for trusted ones."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.hostile.client_stack import Stack, client_stack
from tests.hostile.raw_client import connection, request

pytestmark = pytest.mark.integration

FORGED = [
    ("X-Forwarded-For", "203.0.113.66"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Real-IP", "203.0.113.66"),
    ("Forwarded", "for=203.0.113.66;proto=https"),
]


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with client_stack(tmp_path_factory.mktemp("untrusted")) as s:
        yield s


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with client_stack(tmp_path_factory.mktemp("trusted"), trusted_proxies="127.0.0.1/32") as s:
        yield s


def _forwarded_headers(stack: Stack, marker: str) -> dict[str, list[str]]:
    """Send the forged headers through the proxy; what the node received, by header name."""
    with connection(stack.host, stack.port) as client:
        client.send(request("GET", f"/_sim/echo?marker={marker}", FORGED))
        response = client.read_response()
    assert response is not None and response.status == 200
    received: dict[str, list[str]] = {}
    for name, value in json.loads(response.body)["headers"]:
        received.setdefault(name, []).append(value)
    return received


def _logged_client(stack: Stack, marker: str) -> str | None:
    for _ in range(50):  # the access line is written as the request ends
        for line in stack.proxy.log_text().splitlines():
            if marker in line and '"request"' in line:
                return str(json.loads(line)["client"])
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {marker}")


def test_untrusted_peer_cannot_forge_where_a_request_came_from(untrusted: Stack) -> None:
    received = _forwarded_headers(untrusted, "untrusted")
    assert received["x-forwarded-for"] == ["127.0.0.1"]
    assert received["x-forwarded-proto"] == ["http"]
    for name in ("x-forwarded-host", "x-real-ip", "forwarded"):
        assert name not in received, name
    assert _logged_client(untrusted, "marker=untrusted") == "127.0.0.1"


def test_trusted_peer_forwarding_headers_are_kept_and_appended_to(trusted: Stack) -> None:
    received = _forwarded_headers(trusted, "trusted")
    assert received["x-forwarded-for"] == ["203.0.113.66, 127.0.0.1"]
    assert received["x-forwarded-proto"] == ["https"]
    assert received["x-forwarded-host"] == ["evil.example"]
    assert received["x-real-ip"] == ["203.0.113.66"]
    assert received["forwarded"] == ["for=203.0.113.66;proto=https"]
    assert _logged_client(trusted, "marker=trusted") == "203.0.113.66"
