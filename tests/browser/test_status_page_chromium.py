"""The status page in a real headless Chromium.

The first test runs the system as operators do: three simulated nodes, ``python -m app``
and the browser on ``<proxy>/admin``. The second serves the page next to a scripted
``/admin/backends`` to check escaping, totals, the error banner and the pause toggle.

``STATUS_PAGE_SCREENSHOT=docs/img/status-page.png`` also writes the first test's
screenshot there (relative paths are from the repository root).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.status_page import StatusPage
from sim.processes import REPO_ROOT, NodeProcess, ProxyProcess, free_port, free_port_on_all
from tests.browser.cdp import CDPSession

pytestmark = pytest.mark.integration

NODE_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SCREENSHOT_ENV = "STATUS_PAGE_SCREENSHOT"

ROW_HEALTH = """Object.fromEntries(Array.from(document.querySelectorAll("#rows tr[data-address]"),
  (tr) => [tr.dataset.address, tr.querySelector("td[data-health]").dataset.health]))"""
CSP_VIOLATIONS = "window.__cspViolations"


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    for _ in range(int(timeout / 0.05) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")


def health_is(page: CDPSession, want: dict[str, str], timeout: float) -> None:
    """Wait until the table's rows show exactly ``want`` (address -> data-health)."""
    # Rows follow the pool's order; compare order-free.
    expression = (
        f"(() => {{ const got = {ROW_HEALTH}; const want = {json.dumps(want)};"
        " return Object.keys(got).length === Object.keys(want).length"
        " && Object.entries(want).every(([k, v]) => got[k] === v); })()"
    )
    try:
        page.wait_for(expression, timeout, f"rows {want}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; rows now {page.evaluate(ROW_HEALTH)}") from None


# --------------------------------------------------------------------------- real processes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    port = free_port_on_all(NODE_IPS)
    started: dict[str, NodeProcess] = {}
    try:
        for ip in NODE_IPS:
            started[ip] = NodeProcess(ip, port, log_dir=tmp_path).start()
        for node in started.values():
            node.wait_ready()
        yield started
    finally:
        for node in started.values():
            node.stop()


@pytest.fixture
def proxy(nodes: dict[str, NodeProcess], tmp_path: Path) -> Iterator[ProxyProcess]:
    env = {
        "HYPERBYTEDB_PROXY_BACKEND_SERVICE": ",".join(NODE_IPS),
        "HYPERBYTEDB_PROXY_BACKEND_PORT": str(nodes[NODE_IPS[0]].port),
        "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "0.3",
        "HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS": "500",
        "HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS": "2",
        "LOG_FORMAT": "json",
    }
    process = ProxyProcess(env, log_dir=tmp_path)
    try:
        process.start()
        process.wait_ready()
        yield process
    finally:
        process.stop()


def backends_json(proxy: ProxyProcess) -> dict[str, str]:
    data = proxy.client.get(f"{proxy.url}/admin/backends").json()
    return {b["address"]: b["health"] for b in data["backends"]}


def test_status_page_follows_the_pool_of_a_running_proxy(
    browser: CDPSession, proxy: ProxyProcess, nodes: dict[str, NodeProcess], tmp_path: Path
) -> None:
    active, draining, down = NODE_IPS
    wait_until(lambda: set(backends_json(proxy).values()) == {"active"}, 5, "three active backends")
    with httpx.Client(base_url=proxy.url, timeout=5, trust_env=False) as client:  # counters worth showing
        for i in range(12):
            write = client.post("/write?db=demo", content=f"cpu,host=h{i} value={i}")
            assert write.status_code == 204, write.text
        assert client.get("/query", params={"db": "demo", "q": "SHOW DATABASES"}).status_code == 200
    nodes[draining].set_state("draining")
    nodes[down].stop()
    want = {active: "active", draining: "draining", down: "down"}
    wait_until(lambda: backends_json(proxy) == want, 5, f"the proxy to see {want}")

    page = browser
    page.navigate(f"{proxy.url}/admin")
    served = page.evaluate("document.getElementById('rows') !== null")
    assert served, f"{proxy.url}/admin is not the status page: {page.evaluate('document.body.innerText')!r}"
    health_is(page, want, timeout=5)
    assert page.evaluate("document.getElementById('service').textContent") == ",".join(NODE_IPS)
    assert page.evaluate("document.querySelector('[data-total=routable] .value').textContent") == "1"
    assert page.evaluate("document.getElementById('error').hidden") is True
    badges = page.evaluate(
        "Array.from(document.querySelectorAll('#rows td[data-health] .badge'), b => b.textContent)"
    )
    assert sorted(badges) == ["active", "down", "draining"]  # not colour only
    assert page.evaluate("(w => w.scrollWidth <= w.clientWidth)(document.querySelector('.table-wrap'))")
    screenshot = page.screenshot(tmp_path / "status-page.png")
    if os.environ.get(SCREENSHOT_ENV):
        target = Path(os.environ[SCREENSHOT_ENV])
        target = target if target.is_absolute() else REPO_ROOT / target
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)

    # Same document, no reload: the poll alone brings the recovered node back.
    page.evaluate("window.__sameDocument = true")
    nodes[draining].set_state("active")
    health_is(page, {**want, draining: "active"}, timeout=6)
    assert page.evaluate("window.__sameDocument === true")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    for ip in (active, draining):  # the page and its polls (and no favicon request) stay in the proxy
        paths = nodes[ip].requests()["paths"]
        assert not [p for p in paths if p.startswith("/admin") or p == "/favicon.ico"], paths

    # The proxy goes away: a banner says so and the last data stays on screen.
    proxy.stop()
    page.wait_for("!document.getElementById('error').hidden", 8, "the error banner")
    assert "Could not refresh" in page.evaluate("document.getElementById('error').textContent")
    health_is(page, {**want, draining: "active"}, timeout=1)

    assert page.evaluate(CSP_VIOLATIONS) == []
    assert page.exceptions() == []


# --------------------------------------------------------------------------- scripted JSON


class ScriptedAdmin:
    """The page plus a ``/admin/backends`` whose answer the test sets, on uvicorn in a thread."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {}
        self.status = 200
        self.port = free_port("127.0.0.1")
        app = Starlette(
            routes=[
                Route("/admin", StatusPage.from_package().serve, methods=["GET", "HEAD"]),
                Route("/admin/backends", self._backends),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="scripted-admin", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _backends(self, request: Request) -> Response:
        if self.status != 200:
            return JSONResponse({"error": "scripted failure"}, status_code=self.status)
        return JSONResponse(self.answer)

    def __enter__(self) -> ScriptedAdmin:
        self._thread.start()
        wait_until(lambda: self._server.started or not self._thread.is_alive(), 5, "uvicorn to start")
        assert self._server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)


def iso(seconds_ago: float) -> str:
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return at.isoformat(timespec="milliseconds")


HOSTILE = '<img src=x onerror="window.__pwned=1"><b>bold</b>'


def scripted_pool() -> dict[str, Any]:
    long_error = "connect failed: " + HOSTILE + " " + "x" * 120
    return {
        "service": "<svg onload=window.__pwned=2>",
        "now": iso(0),
        "routable": 1,
        "held_requests": 3,
        "totals": {
            "requests": {"ok": 1200, "fatal": 1, "exhausted": 2},
            "inflight": 4,
            "held": 3,
            "routable": 1,
            "backends": 3,
        },
        "backends": [
            {
                "address": "127.0.0.9",
                "port": 8086,
                "health": "active",
                "excluded": False,
                "inflight": 4,
                "requests": 1203,
                "errors": 3,
                "consecutive_failures": 0,
                "last_probe_at": iso(1.5),
                "last_probe_latency_ms": 1.234,
                "last_error": long_error,
                "transitions": [
                    {"at": iso(60 - i), "from": f"s{i}", "to": f"s{i + 1}", "reason": f"{HOSTILE} #{i}"}
                    for i in range(6)
                ],
            },
            {
                "address": "::1",
                "port": 8087,
                "health": "unknown",
                "excluded": True,
                "inflight": 0,
                "requests": 0,
                "errors": 0,
                "consecutive_failures": 0,
                "last_probe_at": None,
                "last_probe_latency_ms": None,
                "last_error": None,
                "transitions": [],
            },
            {
                "address": "127.0.0.10",
                "port": 8086,
                "health": "<i>odd</i>",
                "excluded": False,
                "inflight": 0,
                "requests": 5,
                "errors": 5,
                "consecutive_failures": 7,
                "last_probe_at": iso(3),
                "last_probe_latency_ms": 1500,
                "last_error": "timed out",
                "transitions": [],
            },
        ],
    }


def text_of(page: CDPSession, selector: str) -> str:
    return page.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")


def test_status_page_renders_data_as_text_and_survives_failures(browser: CDPSession, tmp_path: Path) -> None:
    page = browser
    with ScriptedAdmin() as admin:
        admin.answer = scripted_pool()
        page.navigate(f"{admin.url}/admin")
        health_is(page, {"127.0.0.9": "active", "::1": "unknown", "127.0.0.10": "<i>odd</i>"}, timeout=5)

        # Data is text, never markup.
        assert page.evaluate("document.querySelectorAll('body img, body svg, body b, body i').length") == 0
        assert page.evaluate("window.__pwned") is None
        assert text_of(page, "#service") == "<svg onload=window.__pwned=2>"
        assert page.evaluate("document.title") == "<svg onload=window.__pwned=2> · hyperbytedb-proxy"
        error_cell = "#rows tr[data-address='127.0.0.9'] td.error"
        full_error = scripted_pool()["backends"][0]["last_error"]
        assert page.evaluate(f"document.querySelector({json.dumps(error_cell)}).title") == full_error
        shown = text_of(page, error_cell)
        assert len(shown) == 80 and shown.endswith("…") and full_error.startswith(shown[:-1])

        # Cells, newest transitions first (four of six), unexpected health shown as is in grey.
        row = "#rows tr[data-address='127.0.0.9']"
        assert text_of(page, f"{row} th") == "127.0.0.9:8086"
        assert text_of(page, "#rows tr[data-address='::1'] th") == "[::1]:8087"
        assert text_of(page, "#rows tr[data-address='::1'] td[data-excluded]") == "yes"
        assert text_of(page, f"{row} td[data-excluded]") == "no"
        assert page.evaluate(
            f"Array.from(document.querySelectorAll({json.dumps(row + ' td.num')}), td => td.textContent)"
        ) == ["4", "1,203", "3", "1.23 ms"]
        assert " s ago" in text_of(page, f"{row} time[data-at]")
        assert text_of(page, "#rows tr[data-address='::1'] td.nowrap") == "never"
        assert "7 failed in a row" in text_of(page, "#rows tr[data-address='127.0.0.10'] td.nowrap")
        items = page.evaluate(
            f"Array.from(document.querySelectorAll({json.dumps(row + ' li')}), li => li.textContent)"
        )
        assert len(items) == 4 and items[0].startswith("s5 → s6 ") and items[-1].startswith("s2 → s3 ")
        assert HOSTILE in items[0]
        assert (
            page.evaluate("document.querySelector('#rows tr[data-address=\"127.0.0.10\"] .badge').className")
            == "badge health-unknown"
        )

        # Totals from the JSON's totals object.
        assert text_of(page, "[data-total=requests] .value") == "1,203"
        assert text_of(page, "#outcomes") == "exhausted 2 · fatal 1 · ok 1,200"
        assert text_of(page, "[data-total=held] .value") == "3"
        assert text_of(page, "[data-total=inflight] .value") == "4"
        assert text_of(page, "#health-counts") == "1 active0 draining0 down2 unknown"

        # Narrow screens: the page does not overflow sideways (the table scrolls in its region).
        page.set_viewport(390, 800)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(tmp_path / "status-page-narrow.png")
        page.set_viewport(1200, 800)

        # Without totals the summary falls back to what the backends list says.
        fallback = scripted_pool()
        del fallback["totals"]
        admin.answer = fallback
        page.wait_for("document.getElementById('outcomes').textContent === 'forwarded to backends'", 5)
        assert text_of(page, "[data-total=requests] .value") == "1,208"
        assert text_of(page, "[data-total=held] .value") == "3"

        # A failing endpoint: banner, last data kept; recovery hides the banner.
        admin.status = 500
        page.wait_for("!document.getElementById('error').hidden", 5, "the error banner")
        assert "HTTP 500" in text_of(page, "#error")
        assert page.evaluate("document.querySelectorAll('#rows tr[data-address]').length") == 3
        admin.status = 200
        page.wait_for("document.getElementById('error').hidden", 5, "the banner to go")

        # Paused: no refresh; resumed: at once.
        page.evaluate("document.getElementById('pause').click()")
        assert page.evaluate("document.getElementById('pause').getAttribute('aria-pressed')") == "true"
        one = scripted_pool()
        one["backends"] = one["backends"][:1]
        admin.answer = one
        time.sleep(2.5)
        assert page.evaluate("document.querySelectorAll('#rows tr[data-address]').length") == 3
        page.evaluate("document.getElementById('pause').click()")
        page.wait_for("document.querySelectorAll('#rows tr[data-address]').length === 1", 3, "resume")

        assert page.evaluate(CSP_VIOLATIONS) == []
        assert page.exceptions() == []
