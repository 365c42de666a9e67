"""Which headers cross the proxy, in each direction.

Hop-by-hop headers describe one connection, not the message (RFC 9110
section 7.6.1), so they are dropped along with any header a ``Connection``
header names.  The forwarding headers (``X-Forwarded-*``, ``X-Real-IP``,
``Forwarded``) are believed only from a trusted forwarder (see
:mod:`app.forwarded`); from anyone else they are replaced by what the proxy
saw.  Everything else passes unchanged and in order.
"""

from __future__ import annotations

from collections.abc import Iterable

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",  # part of an h2c upgrade offer, which is never accepted
    }
)

# Set by the proxy itself: the backend's address, the real body length, and
# no 100-continue handshake (the body is already read).
REPLACED_ON_REQUEST = frozenset({b"host", b"content-length", b"expect"})
_NOT_FORWARDED = HOP_BY_HOP | REPLACED_ON_REQUEST

# What a client says about where a request came from; believed only from a
# trusted forwarder, else replaced (X-Forwarded-For, X-Forwarded-Proto) or removed.
FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
_NOT_FORWARDED_UNTRUSTED = _NOT_FORWARDED | FORWARDING
# Connection options that name no header the loop has not dropped already.
_CONNECTION_OPTIONS = HOP_BY_HOP | {b"close"}
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def _connection_tokens(value: bytes, tokens: set[bytes] | None) -> set[bytes] | None:
    """Add the header names a ``Connection`` value lists to ``tokens``."""
    if value.lower() in _PLAIN_CONNECTION:
        return tokens  # the usual value names no header
    found = tokens if tokens is not None else set()
    found.update(token.strip().lower() for token in value.split(b","))
    return found


def request_headers(
    headers: list[Header],
    *,
    host: bytes,
    body_length: int,
    had_length: bool,
    client_ip: str | None,
    scheme: str,
    trusted: bool = False,
) -> list[Header]:
    """The headers to send a backend for a client's request (names as uvicorn gives them: lowercase).

    ``trusted``: the peer is a trusted forwarder, whose forwarding headers are
    kept (``X-Forwarded-For`` appended to).  One pass over the headers; the
    names a ``Connection`` header lists (rare) are removed after it.
    """
    dropped = _NOT_FORWARDED if trusted else _NOT_FORWARDED_UNTRUSTED
    out: list[Header] = [(b"host", host)]
    forwarded_for: list[bytes] = []
    has_proto = False
    tokens: set[bytes] | None = None
    for name, value in headers:
        if name in dropped:
            if name == b"connection":
                tokens = _connection_tokens(value, tokens)
            continue
        if name == b"x-forwarded-for":
            forwarded_for.append(value)
            continue
        if name == b"x-forwarded-proto":
            has_proto = True  # a TLS terminator in front of us knows the original scheme
        out.append((name, value))
    if tokens and not tokens <= _CONNECTION_OPTIONS:
        out = [(name, value) for name, value in out if name not in tokens or name == b"host"]
        if b"x-forwarded-for" in tokens:
            forwarded_for = []
        if b"x-forwarded-proto" in tokens:
            has_proto = False
    if client_ip:
        forwarded_for.append(client_ip.encode("latin-1"))
    if forwarded_for:
        out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    if not has_proto:
        out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    if body_length or had_length:
        out.append((b"content-length", str(body_length).encode("latin-1")))
    return out


BODILESS_STATUSES = (204, 304)
_NOT_RELAYED_BODILESS = HOP_BY_HOP | {b"content-length"}


def response_headers(headers: Iterable[Header], status: int = 200) -> list[Header]:
    """The backend's end-to-end headers, to relay to the client.

    A 204 or 304 never has a body, whatever its ``Content-Length`` says (a
    204 must not carry one; a 304's names the representation's size).  The
    server relaying it would hold the client connection to that length, so
    the header is dropped for those two statuses.
    """
    dropped = _NOT_RELAYED_BODILESS if status in BODILESS_STATUSES else HOP_BY_HOP
    out: list[Header] = []
    tokens: set[bytes] | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered in dropped:
            if lowered == b"connection":
                tokens = _connection_tokens(value, tokens)
            continue
        out.append((name, value))
    if tokens and not tokens <= _CONNECTION_OPTIONS:
        out = [(name, value) for name, value in out if name.lower() not in tokens]
    return out
