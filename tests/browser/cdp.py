"""Just enough of the Chrome DevTools Protocol to drive a headless Chromium from a test.

:class:`ChromiumProcess` starts ``chromium --headless`` with remote debugging on a
loopback port, as a :class:`~sim.processes.ManagedProcess` (own session, log file,
idempotent stop). :class:`CDPSession` talks to one page target over the DevTools
websocket with the synchronous client of ``websockets``. Every wait has a deadline
and an iteration cap; nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import json
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from websockets.sync.client import ClientConnection, connect

from sim.processes import ManagedProcess, free_port, minimal_env

POLL_SECS = 0.1
DEFAULT_TIMEOUT = 10.0
CHROMIUM_NAMES = ("chromium", "chromium-browser")


class CDPError(RuntimeError):
    """The browser answered a command with an error, or a script threw."""


def find_chromium() -> str | None:
    """Path of Debian's ``chromium`` (or ``chromium-browser`` elsewhere), or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class ChromiumProcess(ManagedProcess):
    """Headless Chromium with a throwaway profile and DevTools on ``127.0.0.1:<port>``."""

    kind = "chromium"

    def __init__(
        self,
        binary: str,
        profile_dir: str | Path,
        *,
        port: int | None = None,
        window: tuple[int, int] = (1200, 800),
        log_dir: str | Path | None = None,
    ) -> None:
        self.binary = binary
        self.profile_dir = Path(profile_dir)
        self.port = port if port is not None else free_port("127.0.0.1")
        self.window = window
        super().__init__(log_dir=log_dir, label=str(self.port))

    @property
    def devtools_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        width, height = self.window
        return [
            self.binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",  # small /dev/shm in containers
            "--mute-audio",
            "--force-device-scale-factor=1",
            f"--window-size={width},{height}",
            f"--user-data-dir={self.profile_dir}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={self.port}",
            "about:blank",
        ]

    def environment(self) -> dict[str, str]:
        # HOME inside the profile: nothing lands in the real home directory.
        return minimal_env({"HOME": str(self.profile_dir)})

    def start(self) -> Self:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return super().start()

    def _get_json(self, path: str) -> Any:
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            response = client.get(f"{self.devtools_url}{path}")
            response.raise_for_status()
            return response.json()

    def page_websocket_url(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait for DevTools to answer, then return the websocket URL of the first page target."""
        deadline = time.monotonic() + timeout
        last: object = None
        for _ in range(int(timeout / POLL_SECS) + 2):
            self._ensure_alive()
            try:
                targets = self._get_json("/json")
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
                last = targets
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECS)
        self.stop()
        raise TimeoutError(
            f"chromium DevTools gave no page target within {timeout}s (last: {last!r}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )


class CDPSession:
    """One DevTools websocket to one page: commands, script evaluation, bounded waits."""

    def __init__(self, websocket_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._stack = contextlib.ExitStack()
        connection = connect(
            websocket_url,
            open_timeout=timeout,
            close_timeout=2,
            max_size=None,  # screenshots are large
            proxy=None,  # never through a proxy from the environment: this is loopback traffic
            compression=None,
        )
        self._ws: ClientConnection = self._stack.enter_context(connection)
        self._ids = itertools.count(1)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=2000)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Any:
        """Send one command and return its result; events that arrive meanwhile go to :attr:`events`."""
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        for _ in range(100_000):  # a cap on messages, on top of the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                raw = self._ws.recv(timeout=remaining)
            except TimeoutError:
                break
            message = json.loads(raw)
            if message.get("id") == message_id:
                if "error" in message:
                    raise CDPError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(f"no answer to {method} within {timeout}s")

    def evaluate(self, expression: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The JSON value of ``expression`` in the page (promises are awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"script threw: {text}\n{expression}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str | None = None) -> Any:
        """Poll ``expression`` until it is truthy and return its value; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        value: Any = None
        for _ in range(int(timeout / POLL_SECS) + 2):
            value = self.evaluate(expression, timeout=max(1.0, deadline - time.monotonic()))
            if value:
                return value
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECS)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what or expression} (last value {value!r})"
        )

    def navigate(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Load ``url`` and wait until the document has finished loading."""
        result = self.call("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")
        self.wait_for(
            f"document.readyState === 'complete' && location.href === {json.dumps(url)}",
            timeout,
            f"{url} to load",
        )

    def set_viewport(self, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def screenshot(self, path: str | Path) -> Path:
        """Save the viewport as PNG."""
        result = self.call("Page.captureScreenshot", {"format": "png"}, timeout=DEFAULT_TIMEOUT * 2)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(result["data"]))
        return target

    def exceptions(self) -> list[str]:
        """Uncaught script errors seen so far (needs ``Runtime.enable``)."""
        found = []
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text", ""))
        return found
