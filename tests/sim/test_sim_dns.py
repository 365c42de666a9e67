"""The loopback DNS server answers a real dnspython resolver the way a headless Service would."""

from __future__ import annotations

from collections.abc import Iterator

import dns.asyncresolver
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.query
import dns.rcode
import dns.resolver
import pytest

from sim.dns import DNSServer

pytestmark = pytest.mark.anyio

SERVICE = "hyperbytedb.ns.svc.cluster.local."


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer(records={SERVICE: ["127.0.0.2", "127.0.0.3", "::1"]}) as running:
        yield running


def resolver_for(server: DNSServer) -> dns.asyncresolver.Resolver:
    """A resolver that asks only our server (never /etc/resolv.conf)."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    resolver.lifetime = 2.0
    resolver.timeout = 1.0
    resolver.cache = None
    return resolver


async def addresses(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: str = "A", **kw: bool
) -> list[str]:
    """Sorted addresses of ``name``."""
    answer = await resolver.resolve(name, rdtype, **kw)
    return sorted(item.address for item in answer)


async def test_a_records_with_ttl_1(server: DNSServer) -> None:
    resolver = resolver_for(server)
    answer = await resolver.resolve(SERVICE, "A")
    assert sorted(item.address for item in answer) == ["127.0.0.2", "127.0.0.3"]
    assert answer.rrset is not None and answer.rrset.ttl == 1
    assert answer.response.flags & dns.flags.AA


async def test_aaaa_records(server: DNSServer) -> None:
    assert await addresses(resolver_for(server), SERVICE, "AAAA") == ["::1"]


async def test_unknown_name_is_nxdomain(server: DNSServer) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver_for(server).resolve("missing.ns.svc.cluster.local.", "A")


async def test_known_name_without_that_type_is_noerror_no_answer(server: DNSServer) -> None:
    server.set_records("v4only.test", ["127.0.0.9"])
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver_for(server).resolve("v4only.test.", "AAAA")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver_for(server).resolve("v4only.test.", "TXT")
    query = dns.message.make_query("v4only.test.", "MX")
    response = dns.query.udp(query, server.host, port=server.port, timeout=1.0)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []


async def test_names_are_case_insensitive_and_trailing_dot_optional(server: DNSServer) -> None:
    server.set_records("MiXeD.Example", ["127.0.0.5"])
    resolver = resolver_for(server)
    assert await addresses(resolver, "mixed.example.") == ["127.0.0.5"]
    assert await addresses(resolver, "MIXED.EXAMPLE.") == ["127.0.0.5"]


async def test_short_name_resolves_through_search_domain(server: DNSServer) -> None:
    resolver = resolver_for(server)
    resolver.search = [dns.name.from_text("ns.svc.cluster.local.")]
    resolver.ndots = 5  # as in a Kubernetes pod's resolv.conf
    assert await addresses(resolver, "hyperbytedb", search=True) == ["127.0.0.2", "127.0.0.3"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("hyperbytedb", "A", search=False)


async def test_records_change_at_runtime(server: DNSServer) -> None:
    resolver = resolver_for(server)
    server.set_records(SERVICE, ["127.0.0.4"])
    assert await addresses(resolver, SERVICE) == ["127.0.0.4"]
    server.set_records(SERVICE, [])
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve(SERVICE, "A")
    server.remove(SERVICE)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve(SERVICE, "A")
    assert server.records() == {}


async def test_tcp_and_truncation_fallback(server: DNSServer) -> None:
    many = [f"127.0.{block}.{host}" for block in range(2) for host in range(1, 60)]
    server.set_records("big.test", many)
    resolver = resolver_for(server)
    assert len(await addresses(resolver, "big.test.", tcp=True)) == len(many)
    # Over UDP the 512-byte answer is truncated and dnspython retries over TCP.
    assert len(await addresses(resolver, "big.test.")) == len(many)


def test_only_loopback_addresses_are_accepted() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DNSServer(records={"x.": ["10.0.0.1"]})
    with DNSServer() as server:
        with pytest.raises(ValueError):
            server.set_records("x.", ["192.168.1.1"])
        with pytest.raises(ValueError):
            server.set_records("x.", ["not-an-ip"])
    with pytest.raises(ValueError):
        DNSServer(host="0.0.0.0")


def test_garbage_is_ignored_and_server_keeps_serving(server: DNSServer) -> None:
    assert server.handle(b"\x00\x01garbage") is None
    query = dns.message.make_query(SERVICE, "A")
    response = dns.query.tcp(query, server.host, port=server.port, timeout=1.0)
    assert sorted(item.address for rrset in response.answer for item in rrset) == ["127.0.0.2", "127.0.0.3"]


def test_stop_is_idempotent() -> None:
    server = DNSServer().start()
    assert server.port > 0
    server.stop()
    server.stop()
