"""DNS discovery: keep the pool equal to what the backend service resolves to.

A Kubernetes headless Service answers one A/AAAA record per ready pod, so
re-resolving it on an interval tracks pods as they come and go.  A failed
lookup never empties the pool: the last good answer for that name stands
until DNS answers again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from app.addresses import HostPort
from app.backend import Backend
from app.metrics import Metrics
from app.pool import BackendPool
from app.settings import Settings

log = logging.getLogger("hyperbytedb_proxy.discovery")

HOSTS_FILE = Path("/etc/hosts")
RESOLV_CONF = Path("/etc/resolv.conf")
LOOKUP_LIFETIME = 5.0


class LookupFailed(Exception):
    """The name could not be resolved; the caller keeps what it had."""


class Resolver(Protocol):
    async def resolve(self, name: str) -> list[str]:
        """The IP addresses ``name`` stands for, or raise :class:`LookupFailed`."""
        ...


def canonical_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        return None


class SystemResolver:
    """IP literals, then /etc/hosts, then DNS (A and AAAA) through dnspython.

    DNS honours resolv.conf's search domains and ndots, so a Kubernetes
    short name works; ``nameservers`` replaces resolv.conf's servers.
    """

    def __init__(
        self,
        nameservers: Sequence[HostPort] = (),
        *,
        hosts_file: Path = HOSTS_FILE,
        resolv_conf: Path = RESOLV_CONF,
        lifetime: float = LOOKUP_LIFETIME,
    ) -> None:
        self._hosts_file = hosts_file
        try:
            resolver = dns.asyncresolver.Resolver(filename=str(resolv_conf), configure=True)
        except (dns.resolver.NoResolverConfiguration, OSError):
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
        if nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers]
        resolver.lifetime = lifetime
        resolver.timeout = min(2.0, lifetime)
        self._resolver = resolver

    async def resolve(self, name: str) -> list[str]:
        literal = canonical_ip(name)
        if literal is not None:
            return [literal]
        from_hosts = await asyncio.to_thread(self._from_hosts, name)
        if from_hosts:
            return from_hosts
        try:
            answer = await self._resolver.resolve_name(name, search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            raise LookupFailed(f"{name}: no A or AAAA records ({type(exc).__name__})") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{name}: {exc}") from None
        return [ip for ip in (canonical_ip(a) for a in answer.addresses()) if ip]

    def _from_hosts(self, name: str) -> list[str]:
        """Addresses /etc/hosts gives ``name``, as the system resolver would find them first."""
        try:
            text = self._hosts_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        wanted = name.lower().rstrip(".")
        found: list[str] = []
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and wanted in (alias.lower() for alias in fields[1:]):
                ip = canonical_ip(fields[0])
                if ip and ip not in found:
                    found.append(ip)
        return found


class Discovery:
    def __init__(
        self,
        settings: Settings,
        pool: BackendPool,
        resolver: Resolver,
        metrics: Metrics,
        *,
        on_added: Callable[[Sequence[Backend]], None] = lambda _: None,
        on_removed: Callable[[Sequence[Backend]], None] = lambda _: None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._resolver = resolver
        self._metrics = metrics
        self._on_added = on_added
        self._on_removed = on_removed
        self._self_ip = canonical_ip(settings.self_ip) if settings.self_ip else None
        self._last_good: dict[str, list[str]] = {}
        self._failing: set[str] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.discovery_interval_secs)
            await self.refresh()

    async def refresh(self) -> None:
        """Resolve every configured name once and reconcile the pool with the result."""
        names = self._settings.backend_names
        results = await asyncio.gather(*(self._resolve(name) for name in names))
        if all(result is None for result in results) and not self._last_good:
            return  # nothing known yet: leave the pool as it is
        addresses: dict[str, None] = {}
        for name, result in zip(names, results, strict=True):
            for ip in result if result is not None else self._last_good.get(name, []):
                if ip != self._self_ip:
                    addresses[ip] = None
        change = self._pool.reconcile(addresses)
        for backend in change.added:
            log.info("backend discovered", extra={"fields": {"backend": backend.host_header}})
        for backend in change.removed:
            log.info(
                "backend left DNS",
                extra={"fields": {"backend": backend.host_header, "inflight": backend.inflight}},
            )
        if change.removed:
            self._on_removed(change.removed)
        if change.added:
            self._on_added(change.added)

    async def _resolve(self, name: str) -> list[str] | None:
        try:
            ips = await self._resolver.resolve(name)
        except LookupFailed as exc:
            self._metrics.discovery_errors.inc()
            level = logging.DEBUG if name in self._failing else logging.WARNING
            self._failing.add(name)
            log.log(
                level, "DNS lookup failed; keeping the current pool", extra={"fields": {"error": str(exc)}}
            )
            return None
        except Exception as exc:  # a resolver bug must not stop discovery
            self._metrics.discovery_errors.inc()
            log.exception("DNS lookup raised", extra={"fields": {"name": name, "error": repr(exc)}})
            return None
        if name in self._failing:
            self._failing.discard(name)
            log.info("DNS lookup recovered", extra={"fields": {"name": name, "addresses": len(ips)}})
        self._last_good[name] = ips
        return ips
