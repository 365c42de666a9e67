"""Exact request framing: no body other than the one sent is ever forwarded or acknowledged."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.hostile.client_stack import SHORT_TIMEOUTS, Stack, client_stack
from tests.hostile.raw_client import RawResponse, connection, request

pytestmark = pytest.mark.integration

H2C_OFFER = [
    ("Connection", "Upgrade, HTTP2-Settings"),
    ("Upgrade", "h2c"),
    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with client_stack(tmp_path_factory.mktemp("framing"), **SHORT_TIMEOUTS) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_node(stack: Stack) -> None:
    stack.reset_node()


def _echoed(response: RawResponse | None) -> dict[str, object]:
    assert response is not None and response.status == 200, response
    return dict(json.loads(response.body))


def _forwarded(stack: Stack, path: str) -> int:
    return stack.node_requests().get(path, 0)


# -- Content-Length ---------------------------------------------------------


def test_body_cut_short_by_the_client_gets_400_and_is_never_forwarded(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(request("POST", "/write?db=framing", [("Content-Length", "100")], b"m v=1 1"))
        client.sock.shutdown(1)  # the client says it has nothing more to send
        response = client.read_response()
    assert response is not None and response.status == 400
    assert "declared length" in json.loads(response.body)["error"]
    assert _forwarded(stack, "/write") == 0
    assert stack.node.point_count("framing") == 0


def test_body_that_stops_short_gets_408_and_is_never_forwarded(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(request("POST", "/write?db=framing", [("Content-Length", "100")], b"m v=1 1"))
        response = client.read_response()
    assert response is not None and response.status == 408
    assert _forwarded(stack, "/write") == 0


def test_bytes_beyond_the_content_length_are_the_next_request(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(
            request("POST", "/_sim/echo", [("Content-Length", "5")], b"hello, and then some garbage\r\n\r\n")
        )
        echoed = _echoed(client.read_response())
        assert base64.b64decode(str(echoed["body_b64"])) == b"hello"  # exactly the declared bytes
        response = client.read_response()  # then the garbage, answered after the first response
        assert response is not None and response.status == 400
        assert client.closed_within(5)
    assert _forwarded(stack, "/_sim/echo") == 1


# -- upgrade offers ---------------------------------------------------------


def test_upgrade_offer_with_a_body_is_served_as_http_1_1_with_its_whole_body(stack: Stack) -> None:
    line = b"cpu,host=a v=1 1700000000000000000\n"
    with connection(stack.host, stack.port) as client:
        client.send(
            request("POST", "/write?db=framing", [*H2C_OFFER, ("Content-Length", str(len(line)))], line)
        )
        response = client.read_response()
        assert response is not None and response.status == 204
        # The connection stays usable: the next request (here with the offer again) parses.
        body = b"x" * 100_000
        client.send(
            request("POST", "/_sim/echo", [*H2C_OFFER, ("Content-Length", str(len(body)))], body[:10])
        )
        client.send(body[10:])  # the rest of the body arrives later, in its own reads
        echoed = _echoed(client.read_response())
    assert base64.b64decode(str(echoed["body_b64"])) == body
    names = {name for name, _ in echoed["headers"]}  # type: ignore[attr-defined]
    assert not names & {"upgrade", "http2-settings", "connection"}
    assert stack.node.points("framing") == [line.decode().strip()]


def test_upgrade_offer_body_followed_by_a_pipelined_request(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(
            request("POST", "/_sim/echo?n=1", [*H2C_OFFER, ("Content-Length", "5")], b"hello")
            + request("POST", "/_sim/echo?n=2", [("Content-Length", "3")], b"two")
        )
        first, second = _echoed(client.read_response()), _echoed(client.read_response())
    assert (first["query_string"], first["body_len"]) == ("n=1", 5)
    assert (second["query_string"], second["body_len"]) == ("n=2", 3)


def test_upgrade_offer_with_a_body_cut_short_is_never_forwarded(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(request("POST", "/write?db=framing", [*H2C_OFFER, ("Content-Length", "100")], b"m v=1 1"))
        client.sock.shutdown(1)
        response = client.read_response()
    assert response is not None and response.status == 400
    assert _forwarded(stack, "/write") == 0


def test_chunked_upgrade_offer_gets_400(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        headers = [*H2C_OFFER, ("Transfer-Encoding", "chunked")]
        client.send(request("POST", "/write?db=framing", headers, b"5\r\nm v=1\r\n0\r\n\r\n"))
        response = client.read_response()
    assert response is not None and response.status == 400
    assert _forwarded(stack, "/write") == 0


def test_upgrade_offer_without_a_body_is_served_as_http_1_1(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(request("GET", "/_sim/echo?x=1", H2C_OFFER))
        echoed = _echoed(client.read_response())
    names = {name for name, _ in echoed["headers"]}  # type: ignore[attr-defined]
    assert not names & {"upgrade", "http2-settings", "connection"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http2_write_is_stored_whole(stack: Stack) -> None:
    body = "cpu,host=curl v=1 1700000000000000000\n"
    result = subprocess.run(
        ["curl", "-s", "--http2", "--noproxy", "*", "-o", "-", "-w", "%{http_code}", "--data-binary", "@-",
         f"{stack.proxy.url}/write?db=curl"],
        input=body, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.stdout == "204", result
    assert stack.node.points("curl") == [body.strip()]
    ping = subprocess.run(
        ["curl", "-s", "--http2", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
         f"{stack.proxy.url}/ping"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert ping.stdout == "204"


# -- what already held: keep it so -------------------------------------------

SMUGGLING = {
    "content-length and chunked": [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
    "two different lengths": [("Content-Length", "4"), ("Content-Length", "5")],
    "length with a sign": [("Content-Length", "+4")],
    "obfuscated chunked": [("Transfer-Encoding", "xchunked")],
    "space before the colon": [("Content-Length ", "4")],
}


@pytest.mark.parametrize("headers", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_request_smuggling_variants_get_400(stack: Stack, headers: list[tuple[str, str]]) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(
            request(
                "POST", "/write?db=framing", headers, b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            )
        )
        response = client.read_response()
    assert response is not None and response.status == 400
    assert _forwarded(stack, "/write") == 0 and _forwarded(stack, "/smuggled") == 0


def test_bad_chunk_size_gets_400(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(
            request(
                "POST", "/write?db=framing", [("Transfer-Encoding", "chunked")], b"zz\r\nm v=1\r\n0\r\n\r\n"
            )
        )
        response = client.read_response()
    assert response is not None and response.status == 400
    assert _forwarded(stack, "/write") == 0


def test_pipelined_requests_are_answered_in_order(stack: Stack) -> None:
    with connection(stack.host, stack.port) as client:
        client.send(
            request("POST", "/_sim/echo?n=1", [("Content-Length", "3")], b"one")
            + request("GET", "/ping")
            + request("POST", "/_sim/echo?n=3", [("Content-Length", "5")], b"three")
        )
        first, second, third = (client.read_response() for _ in range(3))
    assert _echoed(first)["query_string"] == "n=1"
    assert second is not None and second.status == 204
    echoed = _echoed(third)
    assert echoed["query_string"] == "n=3" and echoed["body_len"] == 5


def test_client_leaving_mid_body_frees_everything(stack: Stack) -> None:
    for _ in range(5):
        with connection(stack.host, stack.port) as client:
            client.send(request("POST", "/write?db=framing", [("Content-Length", "100000")], b"m v=1" * 100))
    with connection(stack.host, stack.port) as client:
        client.send(request("POST", "/write?db=framing", [("Content-Length", "7")], b"m v=1 1"))
        response = client.read_response()
    assert response is not None and response.status == 204
    assert _forwarded(stack, "/write") == 1
