"""The trusted-forwarders rule: forwarding headers and the client address."""

from __future__ import annotations

import ipaddress
import logging

import httpx
import pytest

from app.forwarded import TrustedProxies, client_address
from app.headers import request_headers
from tests.unit.harness import Harness

pytestmark = pytest.mark.anyio

FORGED = [
    (b"x-forwarded-for", b"203.0.113.66"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"evil.example"),
    (b"x-real-ip", b"203.0.113.66"),
    (b"forwarded", b"for=203.0.113.66;proto=https"),
    (b"x-other", b"kept"),
]


def _trusted(*cidrs: str) -> TrustedProxies:
    return TrustedProxies(ipaddress.ip_network(cidr) for cidr in cidrs)


def _headers(*, trusted: bool) -> list[tuple[bytes, bytes]]:
    return request_headers(
        FORGED,
        host=b"db:8086",
        body_length=0,
        had_length=False,
        client_ip="10.1.2.3",
        scheme="http",
        trusted=trusted,
    )


def test_untrusted_peer_forwarding_headers_are_replaced_by_what_the_proxy_saw() -> None:
    assert _headers(trusted=False) == [
        (b"host", b"db:8086"),
        (b"x-other", b"kept"),
        (b"x-forwarded-for", b"10.1.2.3"),
        (b"x-forwarded-proto", b"http"),
    ]


def test_trusted_peer_forwarding_headers_are_kept_and_appended_to() -> None:
    assert _headers(trusted=True) == [
        (b"host", b"db:8086"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"evil.example"),
        (b"x-real-ip", b"203.0.113.66"),
        (b"forwarded", b"for=203.0.113.66;proto=https"),
        (b"x-other", b"kept"),
        (b"x-forwarded-for", b"203.0.113.66, 10.1.2.3"),
    ]


def test_upgrade_offer_headers_are_never_forwarded() -> None:
    offer = [
        (b"connection", b"Upgrade, HTTP2-Settings"),
        (b"upgrade", b"h2c"),
        (b"http2-settings", b"AAMAAABk"),
    ]
    sent = request_headers(offer, host=b"db", body_length=0, had_length=False, client_ip=None, scheme="http")
    assert sent == [(b"host", b"db"), (b"x-forwarded-proto", b"http")]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("192.0.2.9", b"203.0.113.66", "192.0.2.9"),  # untrusted: the peer, whatever it claims
        ("10.0.0.5", b"203.0.113.66", "203.0.113.66"),  # trusted: the address it names
        ("10.0.0.5", b"1.1.1.1, 203.0.113.66, 10.0.0.7", "203.0.113.66"),  # rightmost untrusted hop
        ("10.0.0.5", b"10.0.0.8, 10.0.0.7", "10.0.0.8"),  # all hops trusted: the first
        ("10.0.0.5", None, "10.0.0.5"),  # trusted, but it named nobody
    ],
)
def test_client_address(peer: str, xff: bytes | None, expected: str) -> None:
    headers = [(b"x-forwarded-for", xff)] if xff is not None else []
    scope = {"client": (peer, 1234), "headers": headers}
    assert client_address(scope, _trusted("10.0.0.0/8")) == expected


def test_no_trusted_proxies_trusts_nobody() -> None:
    nobody = TrustedProxies()
    assert not nobody and not nobody.trusts("127.0.0.1") and not nobody.trusts(None)
    assert _trusted("::1/128").trusts("::1") and not _trusted("::1/128").trusts("not-an-ip")


async def _send_forged(h: Harness, peer: str) -> httpx.Request:
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        transport = httpx.ASGITransport(app=h.app, client=(peer, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            r = await client.post(
                "/write?db=x", content=b"m v=1", headers={"X-Forwarded-For": "203.0.113.66"}
            )
    assert r.status_code == 204
    return h.backends.calls.last.request


async def test_access_log_names_the_peer_unless_it_is_trusted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hyperbytedb_proxy.access")
    sent = await _send_forged(Harness(), "127.0.0.9")
    assert sent.headers.get_list("x-forwarded-for") == ["127.0.0.9"]
    assert [r.fields["client"] for r in caplog.records if r.name.endswith("access")] == ["127.0.0.9"]  # type: ignore[attr-defined]
    caplog.clear()
    sent = await _send_forged(Harness(trusted_proxies="127.0.0.0/8"), "127.0.0.9")
    assert sent.headers.get_list("x-forwarded-for") == ["203.0.113.66, 127.0.0.9"]
    assert [r.fields["client"] for r in caplog.records if r.name.endswith("access")] == ["203.0.113.66"]  # type: ignore[attr-defined]
