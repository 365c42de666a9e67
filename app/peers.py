"""Operator exclusions shared by every replica of the proxy.

Operators (and the HyperbyteDB operator) call the proxy's Service once per
exclusion, which reaches one replica; the others would keep routing to a pod
about to be deleted.  So a replica that accepts an exclude or include repeats
it on each peer replica found through ``PEER_SERVICE`` (a headless Service,
one DNS record per proxy pod) and answers only once every peer applied it.

- The repeated call carries the caller's own ``Authorization`` and a marker
  header, so a peer applies it locally and never repeats it further.
- A peer that does not answer is retried until it acknowledges, leaves DNS
  (a pod that went away needs nothing), or ``PEER_TIMEOUT_SECS`` passes; the
  caller then gets 207 naming the peers that did not apply it.
- A replica that starts asks a peer for the current exclusions before it
  reports ready, so a pod created mid-maintenance does not route to a node
  every other replica avoids.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.addresses import HostPort
from app.discovery import LookupFailed, Resolver, canonical_ip
from app.settings import Settings

log = logging.getLogger("hyperbytedb_proxy.peers")

FANOUT_HEADER = "x-hyperbytedb-proxy-fanout"
EXCLUSIONS_PATH = "/admin/exclusions"
CALL_TIMEOUT_SECS = 2.0
OWN_LOOKUP_TIMEOUT_SECS = 2.0  # the host's own name; a slow resolver must not hold up start-up
RETRY_SECS = (0.1, 0.25, 0.5, 1.0)  # then 1 s between rounds
MAX_ROUNDS = 1000  # bounds the loops; the deadline ends them much sooner
# Answers that mean "applied here" (the second is upstream's already_excluded).
ACKNOWLEDGED = frozenset({200, 409})
# Answers no retry can change: the peer refuses these credentials or this request.
REFUSED = frozenset({400, 401, 403, 405})

Endpoint = Callable[[Request], Awaitable[Response]]


def peer_port(settings: Settings) -> int:
    """The port peers serve the admin API on: the admin listener's if there is one, else the listener's."""
    return (settings.admin_listen or settings.listen).port


def _specific(host: str) -> str | None:
    """An address a listener was bound to, unless it is the wildcard."""
    ip = canonical_ip(host)
    return ip if ip is not None and not ipaddress.ip_address(ip).is_unspecified else None


@dataclass(slots=True)
class FanOutReport:
    """Which peers applied a change and why the others did not."""

    applied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class PeerFleet:
    """The other replicas of this proxy, as DNS lists them."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.peer_service is not None
        self._service = settings.peer_service
        self._port = peer_port(settings)
        self._timeout = settings.peer_timeout_secs
        self._resolver = resolver
        self._client = client
        self._clock = clock
        admin = settings.admin_listen
        hosts = [settings.self_ip, settings.listen.host, admin.host if admin else None]
        self._own: set[str] = {ip for ip in (_specific(h) for h in hosts if h) if ip}
        self._admin_open = settings.admin_open  # peers' operator API needs no token either
        self._changed_while_syncing: set[str] = set()
        self.synced = False

    async def learn_own_addresses(self) -> None:
        """Add the addresses this host's name resolves to (a pod's own IP without SELF_IP)."""
        try:
            lookup = asyncio.to_thread(socket.gethostbyname_ex, socket.gethostname())
            _, _, addresses = await asyncio.wait_for(lookup, OWN_LOOKUP_TIMEOUT_SECS)
        except (OSError, TimeoutError):
            return
        self._own.update(ip for ip in (canonical_ip(a) for a in addresses) if ip)

    async def peers(self) -> list[str] | None:
        """The other replicas' addresses; None when DNS did not answer."""
        try:
            found = await self._resolver.resolve(self._service)
        except LookupFailed as exc:
            log.debug("peer lookup failed", extra={"fields": {"error": str(exc)}})
            return None
        return [ip for ip in found if ip not in self._own]

    def _url(self, peer: str, path: str) -> str:
        return f"http://{HostPort(peer, self._port)}{path}"

    # -- fan-out ----------------------------------------------------------------

    async def fan_out(self, method: str, path: str, authorization: str | None) -> FanOutReport:
        """Repeat an accepted change on every peer until each applied it, left DNS or time ran out."""
        deadline = self._clock() + self._timeout
        headers = {FANOUT_HEADER: "1"}
        if authorization:
            headers["authorization"] = authorization
        applied: list[str] = []
        refused: dict[str, str] = {}
        waiting: dict[str, str] = {}
        known: list[str] | None = None
        for round_number in range(MAX_ROUNDS):
            try:
                found = await asyncio.wait_for(self.peers(), max(0.1, deadline - self._clock()))
            except TimeoutError:
                found = None
            known = found if found is not None else known  # DNS silent: keep asking the last known peers
            if known is None:  # no answer yet: who the peers are is unknown, not "nobody"
                waiting = {self._service: "DNS lookup of the peer service failed"}
            else:
                waiting = {
                    peer: waiting.get(peer, "not reached")
                    for peer in known
                    if peer not in applied and peer not in refused
                }
                if not waiting:
                    break
                await self._call_all(method, path, headers, deadline, waiting, applied, refused)
            if not waiting or self._clock() >= deadline:
                break
            pause = RETRY_SECS[min(round_number, len(RETRY_SECS) - 1)]
            await asyncio.sleep(max(0.0, min(pause, deadline - self._clock())))
        report = FanOutReport(applied=sorted(applied), failed={**refused, **waiting})
        fields = {"path": path, "applied": report.applied, "failed": report.failed}
        if report.failed:
            log.warning("change not applied by every proxy replica", extra={"fields": fields})
        else:
            log.info("change applied by every proxy replica", extra={"fields": fields})
        return report

    async def _call_all(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        deadline: float,
        waiting: dict[str, str],
        applied: list[str],
        refused: dict[str, str],
    ) -> None:
        """One round: call every waiting peer at once and sort them by their answers."""
        timeout = max(0.1, min(CALL_TIMEOUT_SECS, deadline - self._clock()))
        calls = [self._call(method, peer, path, headers, timeout) for peer in waiting]
        for peer, (status, detail) in zip(list(waiting), await asyncio.gather(*calls), strict=True):
            if status in ACKNOWLEDGED:
                applied.append(peer)
                del waiting[peer]
            elif status in REFUSED:
                refused[peer] = detail
                del waiting[peer]
            else:
                waiting[peer] = detail

    async def _call(
        self, method: str, peer: str, path: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, str]:
        try:
            response = await self._client.request(
                method, self._url(peer, path), headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            return 0, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return response.status_code, f"HTTP {response.status_code}"

    # -- start-up sync -----------------------------------------------------------

    def note_change(self, address: str) -> None:
        """A peer's change arrived while syncing: the (possibly older) snapshot must not undo it."""
        if not self.synced:
            self._changed_while_syncing.add(address)

    async def sync_at_start(self, token: str | None, adopt: Callable[[Iterable[str]], None]) -> None:
        """Adopt a peer's exclusions, then count as synced (also when none answers in time)."""
        try:
            if token is not None or self._admin_open:
                await self._sync(token, adopt)
        finally:
            self.synced = True

    async def _sync(self, token: str | None, adopt: Callable[[Iterable[str]], None]) -> None:
        deadline = self._clock() + self._timeout
        headers = {FANOUT_HEADER: "1"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        for round_number in range(MAX_ROUNDS):
            found = await self.peers()
            if not found:  # the first replica (or DNS lists none): nothing to learn
                log.info(
                    "no peer replica to sync exclusions from", extra={"fields": {"service": self._service}}
                )
                return
            # A peer that is itself still starting may not know everything yet: prefer one
            # that has synced; when every peer answered and all are starting (a new
            # Deployment), nobody knows more than their union.
            starting: dict[str, set[str]] = {}
            for peer in found:
                timeout = max(0.1, min(CALL_TIMEOUT_SECS, deadline - self._clock()))
                answer = await self._fetch(peer, headers, timeout)
                if answer is None:
                    continue
                excluded, peer_synced = answer
                if peer_synced:
                    self._adopt(adopt, excluded, [peer])
                    return
                starting[peer] = excluded
            if starting and len(starting) == len(found):
                self._adopt(adopt, set().union(*starting.values()), sorted(starting))
                return
            if self._clock() >= deadline:
                break
            pause = RETRY_SECS[min(round_number, len(RETRY_SECS) - 1)]
            await asyncio.sleep(max(0.0, min(pause, deadline - self._clock())))
        log.warning(
            "no peer replica answered with its exclusions; starting without them",
            extra={"fields": {"service": self._service, "timeout_secs": self._timeout}},
        )

    def _adopt(self, adopt: Callable[[Iterable[str]], None], excluded: set[str], peers: list[str]) -> None:
        adopt(excluded - self._changed_while_syncing)
        log.info(
            "exclusions synced from a peer replica",
            extra={"fields": {"peers": peers, "excluded": sorted(excluded)}},
        )

    async def _fetch(
        self, peer: str, headers: dict[str, str], timeout: float
    ) -> tuple[set[str], bool] | None:
        """A peer's exclusions and whether it has synced itself; None when it did not answer."""
        try:
            response = await self._client.get(
                self._url(peer, EXCLUSIONS_PATH), headers=headers, timeout=timeout
            )
            if response.status_code != 200:
                return None
            body = response.json()
            listed, peer_synced = body["excluded"], body.get("synced", True)
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return {ip for ip in (canonical_ip(str(item)) for item in listed) if ip}, peer_synced is not False


def fleet_wide(fleet: PeerFleet | None, endpoint: Endpoint) -> Endpoint:
    """Wrap an exclude/include endpoint so that what it accepts is applied on every replica.

    The local answer is returned unchanged when every peer applied the change;
    otherwise it becomes a 207 whose body adds ``peers_applied`` and
    ``peers_failed``.  Local refusals (bad or unknown IP, bad token) are not
    repeated anywhere.
    """
    if fleet is None:
        return endpoint

    async def fanned_out(request: Request) -> Response:
        if request.headers.get(FANOUT_HEADER):
            address = canonical_ip(str(request.path_params.get("ip", "")))
            if address is not None:
                fleet.note_change(address)
            return await endpoint(request)
        response = await endpoint(request)
        if response.status_code not in ACKNOWLEDGED:
            return response
        report = await fleet.fan_out(request.method, request.url.path, request.headers.get("authorization"))
        if not report.failed:
            return response
        try:
            local = json.loads(bytes(response.body))
        except ValueError:
            local = None
        body = dict(local) if isinstance(local, dict) else {"local": local}
        body["peers_applied"] = report.applied
        body["peers_failed"] = [
            {"peer": peer, "error": error} for peer, error in sorted(report.failed.items())
        ]
        return JSONResponse(body, status_code=207)

    return fanned_out
