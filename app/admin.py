"""Admin routes: liveness, readiness, metrics and the pool as JSON.

They share the client listener, so they are registered ahead of the
catch-all and never reach a backend.
"""

from __future__ import annotations

import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.backend import Backend
from app.state import ProxyState


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


def backend_view(backend: Backend) -> dict[str, Any]:
    latency = backend.last_probe_latency
    return {
        "address": backend.address,
        "port": backend.port,
        "health": backend.health.value,
        "excluded": backend.excluded,
        "inflight": backend.inflight,
        "requests": backend.requests,
        "errors": backend.errors,
        "consecutive_failures": backend.consecutive_failures,
        "last_probe_at": _iso(backend.last_probe_at),
        "last_probe_latency_ms": None if latency is None else round(latency * 1000, 2),
        "last_error": backend.last_error,
        "transitions": [
            {"at": _iso(t.at), "from": t.old.value, "to": t.new.value, "reason": t.reason}
            for t in backend.transitions
        ],
    }


def admin_routes(state: ProxyState) -> list[Route]:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        routable = state.pool.routable_count
        if state.shutting_down:
            return JSONResponse({"status": "shutting down", "routable_backends": routable}, status_code=503)
        if routable == 0:
            return JSONResponse({"status": "no active backend", "routable_backends": 0}, status_code=503)
        return JSONResponse({"status": "ready", "routable_backends": routable})

    async def metrics(request: Request) -> Response:
        state.refresh_gauges()
        exposition = state.metrics.expose()
        return Response(exposition.body, media_type=exposition.content_type)

    async def backends(request: Request) -> Response:
        return JSONResponse(
            {
                "service": state.settings.backend_service,
                "routable": state.pool.routable_count,
                "held_requests": state.proxy.pending,
                "backends": [backend_view(b) for b in state.pool.backends()],
            }
        )

    read_only = ["GET", "HEAD"]
    return [
        Route("/healthz", healthz, methods=read_only),
        Route("/readyz", readyz, methods=read_only),
        Route("/metrics", metrics, methods=read_only),
        Route("/admin/backends", backends, methods=read_only),
    ]
