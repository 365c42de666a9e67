"""The uvicorn ceiling: a bare ASGI app answering what the benchmark's backend answers.

Run by ``python -m bench`` as the "uvicorn ceiling" target, on exactly the
uvicorn configuration the proxy uses (``app.server.uvicorn_config``), so its
req/s is the most any app served this way can do here.  A proxy makes two
HTTP exchanges per request (client side and backend side), so about half of
this row is the floor's mirror image: the best a uvicorn-based proxy can reach.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from app.server import uvicorn_config
from app.settings import SettingsError, load_settings
from bench.nginx import HEALTH_BODY, QUERY_BODY


def _answer(status: int, body: bytes, content_type: bytes | None) -> tuple[dict[str, Any], dict[str, Any]]:
    # The headers nginx sends (minus Date, which would cost a clock read): the same bytes travel.
    headers = [(b"server", b"nginx"), (b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    start = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


JSON = b"application/json"
ANSWERS = {
    "/query": _answer(200, QUERY_BODY.encode(), JSON),
    "/write": _answer(204, b"", None),
    "/health": _answer(200, HEALTH_BODY.encode(), JSON),
    "/healthz": _answer(200, b"ok", None),
    "/readyz": _answer(200, b"ok", None),
    "/ping": _answer(204, b"", None),
}
NOT_FOUND = _answer(404, b"", None)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the request body, as the proxy must, then answers from the table."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    start, body = ANSWERS.get(scope["path"], NOT_FOUND)
    await send(start)
    await send(body)


def main() -> int:
    try:
        settings = load_settings({"HYPERBYTEDB_PROXY_BACKEND_SERVICE": "unused", **os.environ})
    except SettingsError as exc:
        print(f"bench.ceiling: configuration error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn_config(app, settings, on_violation=lambda limit: None)
    config.lifespan = "off"  # nothing to start; the proxy's lifespan is not part of a request's cost
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
