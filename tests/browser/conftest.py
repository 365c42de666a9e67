"""A real headless Chromium for the status page tests, driven over the DevTools Protocol."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.cdp import CDPSession, ChromiumProcess, find_chromium

SKIP_ENV = "SKIP_BROWSER_TESTS"

# Installed on the page before any of its own scripts run: records policy violations.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline") + " " + e.sample);
});
"""


@pytest.fixture
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"chromium is not installed and {SKIP_ENV}=1")
        pytest.fail(
            "chromium is not installed: the status page tests need a real browser "
            f"(Debian: apt-get install -y chromium). Set {SKIP_ENV}=1 to skip them instead.",
            pytrace=False,
        )
    return binary


@pytest.fixture
def browser(chromium_binary: str, tmp_path: Path) -> Iterator[CDPSession]:
    """A page in a fresh headless Chromium (1200x800), with script errors and CSP violations recorded."""
    chromium = ChromiumProcess(chromium_binary, tmp_path / "chromium-profile", log_dir=tmp_path)
    chromium.start()
    try:
        with CDPSession(chromium.page_websocket_url()) as page:
            page.call("Page.enable")
            page.call("Runtime.enable")
            page.call("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP_VIOLATIONS})
            page.set_viewport(1200, 800)
            yield page
    finally:
        chromium.stop()
