"""The gunicorn workers enforce the same client limits as the single-process server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.hostile.client_stack import SHORT_TIMEOUTS, Stack, client_stack
from tests.hostile.raw_client import connection, request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with client_stack(tmp_path_factory.mktemp("gunicorn"), gunicorn_workers=2, **SHORT_TIMEOUTS) as s:
        yield s


def test_oversized_head_gets_431_from_a_worker(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(b"GET /ping HTTP/1.1\r\nHost: proxy\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n")
        response = client.read_response()
    assert response is not None and response.status == 431
    assert stack.violations("head_size") >= 1  # counted across the workers


def test_slow_head_gets_408_from_a_worker(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(b"GET /ping HTTP/1.1\r\nHost: proxy\r\n")
        response = client.read_response()
    assert response is not None and response.status == 408


def test_upgrade_offer_with_a_body_is_served_whole_by_a_worker(stack: Stack) -> None:
    offer = [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABk")]
    with connection(stack.host, stack.port) as client:
        client.send(request("POST", "/_sim/echo", [*offer, ("Content-Length", "5")], b"hello"))
        response = client.read_response()
    assert response is not None and response.status == 200
    assert json.loads(response.body)["body_len"] == 5
