"""Admin routes: liveness, readiness, metrics, the pool as JSON and operator controls.

With one listener they are registered ahead of the catch-all and never
reach a backend; with ``ADMIN_LISTEN`` they are served on that listener
only.  The operator endpoints answer with the upstream proxy's status codes
and fields, so the HyperbyteDB operator drives this proxy as it drives its own.
"""

from __future__ import annotations

import datetime
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.backend import Backend
from app.discovery import canonical_ip
from app.peers import EXCLUSIONS_PATH, fleet_wide
from app.state import ProxyState
from app.status_page import StatusPage

Endpoint = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def require_token(state: ProxyState, endpoint: Endpoint) -> Endpoint:
    """Guard an operator endpoint with the configured bearer token (compared in constant time)."""
    configured = state.settings.admin_token
    if state.settings.admin_open:
        return endpoint  # the admin listener's network is the boundary, as upstream's

    async def guarded(request: Request) -> Response:
        if configured is None:
            return _error(
                403,
                "admin endpoints are disabled: set HYPERBYTEDB_PROXY_ADMIN_TOKEN and send "
                "'Authorization: Bearer <token>' to enable them",
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = configured.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="admin"'})
        return await endpoint(request)

    return guarded


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


def _ejection_view(backend: Backend) -> dict[str, Any] | None:
    ejection = backend.ejection
    if ejection is None:
        return None
    return {
        "reason": ejection.reason,
        "since": _iso(ejection.since),
        "until": _iso(ejection.until),
        "ejections": backend.ejections,
    }


def backend_view(backend: Backend) -> dict[str, Any]:
    latency = backend.last_probe_latency
    return {
        "address": backend.address,
        "port": backend.port,
        "health": backend.health.value,
        "excluded": backend.excluded,
        "routable": backend.routable,
        "inflight": backend.inflight,
        "requests": backend.requests,
        "errors": backend.errors,
        "consecutive_failures": backend.consecutive_failures,
        "forward_failures": backend.forward_failures,
        "ejection": _ejection_view(backend),
        "last_probe_at": _iso(backend.last_probe_at),
        "last_probe_latency_ms": None if latency is None else round(latency * 1000, 2),
        "last_error": backend.last_error,
        "transitions": [
            {"at": _iso(t.at), "from": t.old.value, "to": t.new.value, "reason": t.reason}
            for t in backend.transitions
        ],
    }


def pool_entry(backend: Backend) -> dict[str, Any]:
    """One backend in the upstream proxy's ``/admin/pool`` shape (plus a few fields of ours)."""
    return {
        "addr": backend.address,
        "port": backend.port,
        "health": backend.health.value,
        "excluded": backend.excluded,
        "inflight": backend.inflight,
        "consecutive_failures": backend.consecutive_failures,
        "last_probe_unix": None if backend.last_probe_at is None else int(backend.last_probe_at),
        "routable": backend.routable,
        "ejected": backend.ejection is not None,
        "last_error": backend.last_error,
    }


def _operator_error(status: int, message: str) -> Response:
    """Upstream's error shape, with this proxy's usual ``error`` field alongside."""
    return JSONResponse({"status": "error", "message": message, "error": message}, status_code=status)


def admin_routes(state: ProxyState) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        routable = state.pool.routable_count
        if state.shutting_down:
            return JSONResponse({"status": "shutting down", "routable_backends": routable}, status_code=503)
        if state.peers is not None and not state.peers.synced:
            body = {"status": "syncing exclusions from peer replicas", "routable_backends": routable}
            return JSONResponse(body, status_code=503)
        if routable == 0:
            return JSONResponse({"status": "no active backend", "routable_backends": 0}, status_code=503)
        return JSONResponse({"status": "ready", "routable_backends": routable})

    async def metrics(request: Request) -> Response:
        state.refresh_gauges()
        exposition = state.metrics.expose()
        return Response(exposition.body, media_type=exposition.content_type)

    async def backends(request: Request) -> Response:
        members = state.pool.backends()
        return JSONResponse(
            {
                "service": state.settings.backend_service,
                "now": _iso(time.time()),
                "routable": state.pool.routable_count,
                "held_requests": state.proxy.pending,
                "totals": {
                    "requests": dict(state.proxy.outcomes),
                    "inflight": sum(b.inflight for b in members),
                    "held": state.proxy.pending,
                    "routable": state.pool.routable_count,
                    "backends": len(members),
                },
                "backends": [backend_view(b) for b in members],
            }
        )

    async def pool(request: Request) -> Response:
        return JSONResponse([pool_entry(b) for b in state.pool.backends()])

    async def exclusions(request: Request) -> Response:
        synced = state.peers is None or state.peers.synced
        return JSONResponse({"excluded": sorted(state.exclusions.addresses), "synced": synced})

    def exclusion(excluded: bool) -> Endpoint:
        done, unchanged = ("excluded", "already_excluded") if excluded else ("included", "not_excluded")
        unchanged_status = 409 if excluded else 200

        async def change(request: Request) -> Response:
            raw = request.path_params["ip"]
            address = canonical_ip(raw)
            if address is None:
                return _operator_error(400, f"{raw!r} is not an IP address")
            backend = state.pool.get(address)
            if backend is None:
                return _operator_error(404, f"{address} is not a known backend")
            if backend.excluded == excluded:
                body = {"status": unchanged, "ip": address, **backend_view(backend)}
                return JSONResponse(body, status_code=unchanged_status)
            state.exclusions.set_excluded(backend, excluded)
            return JSONResponse({"status": done, "ip": address, **backend_view(backend)})

        return change

    read_only = ["GET", "HEAD"]
    return [
        Route("/healthz", healthz, methods=read_only),
        Route("/readyz", readyz, methods=read_only),
        Route("/metrics", metrics, methods=read_only),
        Route("/admin", StatusPage.from_package().serve, methods=read_only),
        Route("/admin/backends", backends, methods=read_only),
        Route("/admin/pool", require_token(state, pool), methods=read_only),
        Route(EXCLUSIONS_PATH, require_token(state, exclusions), methods=read_only),
        Route(
            "/admin/backends/{ip}/exclude",
            require_token(state, fleet_wide(state.peers, exclusion(True))),
            methods=["POST"],
        ),
        Route(
            "/admin/backends/{ip}/include",
            require_token(state, fleet_wide(state.peers, exclusion(False))),
            methods=["POST"],
        ),
    ]
