"""Network addresses as operators write them: ``host:port``, ``[v6]:port``, DNS servers."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host (name or IP literal, without brackets) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str, *, default_port: int | None = None) -> HostPort:
    """Parse ``host:port``, ``[v6]:port``, or a bare host when a default port is given."""
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    port_text: str | None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']' after an IPv6 address")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError("expected ':port' after ']'")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, None  # a bare name, IPv4 or unbracketed IPv6
    if port_text is None:
        if default_port is None:
            raise ValueError("expected host:port, e.g. 0.0.0.0:8086 or [::]:8086")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"port {port_text!r} is not a number")
        port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    if not host:
        raise ValueError("the host part is empty")
    return HostPort(host, port)


def parse_nameservers(value: str) -> tuple[HostPort, ...]:
    """Comma-separated ``ip[:port]`` DNS servers; names are refused (they would need DNS themselves)."""
    servers = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        server = parse_host_port(item, default_port=DNS_PORT)
        ipaddress.ip_address(server.host)
        servers.append(server)
    return tuple(servers)
