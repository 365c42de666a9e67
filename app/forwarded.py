"""Who sent a request: the trusted-forwarders rule.

A client can write any ``X-Forwarded-For`` it likes.  Only a peer inside
``TRUSTED_PROXIES`` (an ingress controller, a load balancer) is believed
about the client behind it; for everyone else the proxy says what it saw
itself.  The same rule names the client in the headers sent to the
database and in the access log.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Scope = Mapping[str, Any]


class TrustedProxies:
    """The forwarders whose ``X-Forwarded-*`` headers are believed; parsed once."""

    __slots__ = ("_match", "_networks")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self._networks = tuple(networks)
        # Peers are few (the forwarders themselves): remember each verdict.
        self._match = functools.lru_cache(maxsize=1024)(self._in_networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str | None) -> bool:
        """Whether ``address`` (an IP literal) is a trusted forwarder; free when none is configured."""
        if not self._networks or not address:
            return False
        return self._match(address)

    def _in_networks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


def client_address(scope: Scope, trusted: TrustedProxies) -> str | None:
    """The address of the client that made this request, by the trusted-forwarders rule.

    Untrusted peer: the peer itself.  Trusted peer: walking ``X-Forwarded-For``
    from the right, the first address that is not itself a trusted forwarder
    (nginx's ``real_ip_recursive``), so a client cannot choose what is logged
    by prepending addresses.
    """
    client = scope.get("client")
    peer = client[0] if isinstance(client, tuple | list) else None
    if not trusted.trusts(peer):
        return peer
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops += (hop.strip() for hop in value.decode("latin-1").split(","))
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not trusted.trusts(hop):
            return hop
    return hops[0] if hops else peer
