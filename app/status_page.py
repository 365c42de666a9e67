"""The operator status page: ``GET /admin``, one self-contained HTML document.

The page is static: it embeds no data and no settings, only the CSS and
vanilla JavaScript of ``app/static`` inlined into ``index.html``, and the
script polls ``/admin/backends`` every two seconds and draws the pool from
that JSON.  So it works offline and behind a port-forward, and it can leak
nothing the JSON endpoint does not already show.

Every value from the JSON reaches the DOM through ``textContent`` or
``setAttribute`` on inert attributes, never as markup.  The Content-Security-
Policy backs that up: scripts and styles run only with this response's nonce,
the page may talk to its own origin only, and Trusted Types forbid the
HTML-string sinks (``innerHTML`` and friends) outright.
"""

from __future__ import annotations

import secrets
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

_NONCE = "__CSP_NONCE__"
_INLINED = (("__STATUS_CSS__", "status.css"), ("__STATUS_JS__", "status.js"))


def content_security_policy(nonce: str) -> str:
    """A policy that allows exactly this page's own inline script and style."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            "img-src data:",  # the empty favicon, so browsers do not ask the backends for one
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        )
    )


class StatusPage:
    """The page's files, read once; each response gets a fresh nonce."""

    def __init__(self, html: str) -> None:
        if _NONCE not in html:
            raise ValueError(f"the status page has no {_NONCE} placeholder for the CSP nonce")
        self._parts = html.split(_NONCE)

    @classmethod
    def from_package(cls) -> StatusPage:
        """Assemble ``app/static``'s files into one document (inline: the policy allows no fetches)."""
        files = resources.files("app") / "static"
        html = (files / "index.html").read_text(encoding="utf-8")
        for marker, name in _INLINED:
            html = html.replace(marker, (files / name).read_text(encoding="utf-8").rstrip("\n"))
        return cls(html)

    def render(self, nonce: str) -> str:
        return nonce.join(self._parts)

    async def serve(self, request: Request) -> Response:
        """Serve the page; never cached (it is small and the policy changes each time)."""
        nonce = secrets.token_urlsafe(18)
        return HTMLResponse(
            self.render(nonce),
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": content_security_policy(nonce),
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
            },
        )
