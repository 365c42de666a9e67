"""The forwarding client: an httpx.AsyncClient for relaying other people's requests.

A client acting for itself wants authentication, redirects, a cookie jar and
event hooks.  A proxy wants none of them -- a shared cookie jar would even
carry one user's cookies into the next user's requests -- and together they
cost more than the forward itself (about 60 µs of a ~170 µs proxied request
here).  ``send`` therefore hands the prepared request straight to the
transport; everything else about the client is stock httpx.
"""

from __future__ import annotations

from typing import Any

import httpx


class ForwardingClient(httpx.AsyncClient):
    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(transport=transport, timeout=None, follow_redirects=False, trust_env=False)
        self._forward_transport = transport

    async def send(self, request: httpx.Request, *, stream: bool = False, **_: Any) -> httpx.Response:
        """Send exactly ``request``: no auth, no redirects, no cookies stored or added."""
        if self.is_closed:
            raise RuntimeError("the forwarding client is closed")
        response = await self._forward_transport.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response
