"""The status page as served: headers, policy, and what the document may and may not contain.

Fast and browser-free; ``test_status_page_chromium.py`` checks what a real browser makes of it.
"""

from __future__ import annotations

import re

import pytest
from starlette.routing import Route

from app.backend import Health
from app.status_page import StatusPage
from tests.unit.harness import SERVICE, Harness

pytestmark = pytest.mark.anyio

SCRIPT_RE = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.DOTALL)
STYLE_RE = re.compile(r"<style\b([^>]*)>", re.DOTALL)


def with_status_page(h: Harness) -> Harness:
    """Route ``/admin`` to the page unless ``app/admin.py`` already does."""
    routes = h.app.router.routes
    if not any(getattr(route, "path", None) == "/admin" for route in routes):
        routes.insert(0, Route("/admin", StatusPage.from_package().serve, methods=["GET", "HEAD"]))
    return h


def policy(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


async def test_page_is_served_with_a_strict_policy() -> None:
    h = with_status_page(Harness())
    async with h.running():
        response = await h.client.get("/admin")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"

    csp = policy(response.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["require-trusted-types-for"] == ["'script'"]
    (script_source,) = csp["script-src"]
    (style_source,) = csp["style-src"]
    nonce = script_source.removeprefix("'nonce-").removesuffix("'")
    assert script_source == style_source == f"'nonce-{nonce}'" and len(nonce) >= 22
    assert "unsafe" not in response.headers["content-security-policy"]

    html = response.text
    scripts = SCRIPT_RE.findall(html)
    styles = STYLE_RE.findall(html)
    assert len(scripts) == 1 and len(styles) == 1
    assert all(f'nonce="{nonce}"' in attrs for attrs, _ in scripts)
    assert all(f'nonce="{nonce}"' in attrs for attrs in styles)
    assert " style=" not in html  # inline style attributes would be blocked by the policy
    assert not h.backends.calls  # the page never reaches a backend


async def test_each_response_gets_a_fresh_nonce_and_head_works() -> None:
    h = with_status_page(Harness())
    async with h.running():
        first = await h.client.get("/admin")
        second = await h.client.get("/admin")
        head = await h.client.head("/admin")
    assert first.headers["content-security-policy"] != second.headers["content-security-policy"]
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/html")
    assert "nonce-" in head.headers["content-security-policy"]


async def test_page_is_self_contained_and_embeds_no_data() -> None:
    h = with_status_page(Harness())
    async with h.running():
        html = (await h.client.get("/admin")).text
    # No external assets, no CDN: nothing absolute, protocol-relative or loaded by URL.
    assert not re.search(r"(?i)\b(?:https?|wss?|ftp):", html)
    assert not re.search(r"""(?i)(?:src|href|action)\s*=\s*["']?//""", html)
    assert not re.search(r"(?i)<script[^>]*\bsrc=", html)
    assert not re.search(r"(?i)<link[^>]*rel=[\"']?stylesheet", html)
    assert not re.search(r"(?i)@import|url\(", html)
    assert re.findall(r"""href="([^"]*)\"""", html) == ["data:,", "admin/backends", "admin/backends"]
    # Static: nothing from the settings or the pool is baked in (the JSON endpoint has it all).
    assert SERVICE not in html and "127.0.0.2" not in html


async def test_script_polls_the_backends_json_and_never_parses_data_as_html() -> None:
    h = with_status_page(Harness())
    async with h.running():
        html = (await h.client.get("/admin")).text
    ((_, script),) = SCRIPT_RE.findall(html)
    # Path-relative, so /admin fetches /admin/backends (and /prefix/admin fetches /prefix/admin/backends).
    assert 'const ENDPOINT = "admin/backends";' in script
    assert "fetch(ENDPOINT" in script
    assert "REFRESH_MS = 2000" in script
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    for hook in ("data-address", "data-health", "<caption", 'role="alert"'):
        assert hook in html, hook


async def test_json_has_every_field_the_page_reads() -> None:
    """The page's contract with ``/admin/backends``; ``totals`` and ``now`` are optional extras."""
    h = with_status_page(Harness(ips=["127.0.0.2", "127.0.0.3"]))
    async with h.running():
        h.set_health("127.0.0.3", Health.DRAINING)
        view = (await h.client.get("/admin/backends")).json()
    assert {"service", "routable", "held_requests", "backends"} <= set(view)
    fields = {"address", "port", "health", "excluded", "inflight", "requests", "errors",
              "consecutive_failures", "last_probe_at", "last_probe_latency_ms", "last_error",
              "transitions"}  # fmt: skip
    for backend in view["backends"]:
        assert fields <= set(backend)
        assert backend["health"] in {"unknown", "active", "draining", "down"}
        for transition in backend["transitions"]:
            assert {"at", "from", "to", "reason"} <= set(transition)
    if "totals" in view:
        totals = view["totals"]
        assert {"requests", "inflight", "held", "routable", "backends"} <= set(totals)
        assert all(isinstance(count, int) for count in totals["requests"].values())
