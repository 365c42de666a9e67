"""A simulated HyperbyteDB node: the InfluxDB v1 surface plus test controls.

Integration tests, chaos runs and benchmarks need many database nodes that can
be told to drain, sync, fail or hang on cue, and whose stored points can be
counted afterwards.  This is a raw ASGI app (no framework) because benchmarks
use it alone as the "backend" baseline, so ``/ping``, ``/query`` and ``/write``
must cost as little as possible.

Behaviour follows the real HyperbyteDB as the proxy sees it.  Choices the
database leaves open:

- ``/ping`` answers 204 in every state but ``hang``; ``/query`` works while
  ``failed`` (only the WAL writer is down, reads still work).
- ``hang`` stalls every request outside ``/_sim/``; they resume (and are handled
  in the new state) when a control call moves the node out of ``hang``.  All
  ``/_sim/`` endpoints keep answering while hung, so a test can un-hang it.
- Fault and delay injection (``/_sim/fail``, ``/_sim/delay``) apply to data
  requests and to the probe endpoints ``/_sim/echo``, ``/_sim/headers`` and
  ``/_sim/stream``, never to the control endpoints.  A fail rule with
  ``"reset": true`` reads the request and resets the connection unanswered.
- ``X-Hyperbytedb-Redirect`` is only sent when the node knows a peer (``--peer``).
- Replication is off unless peers are given (``--replicate-to``, see
  :mod:`sim.replication`): tests that count per-node stores keep them apart,
  while the demo's nodes share their data as a real cluster's do.

Run: ``python -m sim.node --host 127.0.0.2 --port 8086 [--state syncing --sync-secs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import math
import os
import re
import socket
import struct
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl

from sim.lineproto import LineProtocolError, Point, parse_lines
from sim.replication import REPLICATE_PATH, SYNC_PATH, Batch, Replicator, snapshot_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

VERSION = "hyperbytedb-0.8.3-sim"
STATES = ("active", "syncing", "joining", "draining", "leaving", "failed", "hang")
NOT_SERVING = frozenset({"syncing", "joining", "draining", "leaving"})
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
POINTS_FILE = "points.lp"
STREAM_PATTERN = b"0123456789abcdef"
MAX_STREAM_CHUNK = 16 * 1024 * 1024
CONTROL_PATHS = frozenset(
    {"/_sim/state", "/_sim/points", "/_sim/fail", "/_sim/delay", "/_sim/requests", "/_sim/reset"}
)
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FROM_RE = re.compile(r"\bFROM\s+(\S+)", re.IGNORECASE)
_CREATE_DB_RE = re.compile(r"CREATE\s+DATABASE\s+(\"[^\"]+\"|\S+)", re.IGNORECASE)
_JSON = b"application/json"


class RequestError(Exception):
    """Ends a request early with a JSON error response."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


# --------------------------------------------------------------------------- storage


class PointStore:
    """Points keyed by (db, rp, series + timestamp), optionally appended to a file.

    Keying like the database means a write delivered twice (a retry) is one
    point, so "distinct points across nodes" is a meaningful count.  The file
    is appended before the write is acknowledged, so a SIGKILLed node restarted
    on the same directory still has every point it answered 204 for.
    """

    def __init__(self, data_dir: Path | None = None, *, fsync: bool = False) -> None:
        self._points: dict[tuple[str, str, str], str] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self.databases: set[str] = set()
        self._fsync = fsync
        self._file: TextIO | None = None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / POINTS_FILE
            if path.exists():
                self._load(path)
            self._file = path.open("a", encoding="utf-8")

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for record in handle:
                db, sep1, rest = record.rstrip("\n").partition("\t")
                rp, sep2, line = rest.partition("\t")
                if not (sep1 and sep2 and line):
                    continue  # a torn last record from a SIGKILL mid-write
                try:
                    points = parse_lines(line, precision="n", now_ns=0)
                except LineProtocolError:
                    continue
                self._remember(db, rp, points)

    def _remember(self, db: str, rp: str, points: Iterable[Point]) -> list[str]:
        self.databases.add(db)
        added: list[str] = []
        for point in points:
            key = (db, rp, point.key)
            line = point.line()
            if key not in self._points:
                self._counts[(db, point.measurement)] += 1
            if self._points.get(key) != line:
                self._points[key] = line
                added.append(line)
        return added

    def add(self, db: str, rp: str, points: list[Point]) -> None:
        """Store points; persisted (flushed to the OS) before this returns."""
        lines = self._remember(db, rp, points)
        if self._file is not None and lines:
            self._file.write("".join(f"{db}\t{rp}\t{line}\n" for line in lines))
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())

    def count(self, db: str | None = None, measurement: str | None = None) -> int:
        """Distinct points, optionally restricted to one database and/or measurement."""
        if db is None and measurement is None:
            return len(self._points)
        return sum(
            n
            for (pdb, pm), n in self._counts.items()
            if (db is None or pdb == db) and (measurement is None or pm == measurement)
        )

    def measurements(self, db: str) -> list[str]:
        """Measurement names with points in ``db``."""
        return sorted({m for (pdb, m), n in self._counts.items() if pdb == db and n})

    def records(self) -> Iterable[tuple[str, str, str]]:
        """Every stored point as (db, rp, line), for a peer catching up."""
        for (db, rp, _key), line in self._points.items():
            yield db, rp, line

    def lines(self, db: str | None = None) -> list[str]:
        """Stored points as line protocol with nanosecond timestamps."""
        return [line for (pdb, _rp, _key), line in self._points.items() if db is None or pdb == db]

    def clear(self) -> None:
        """Forget every point, on disk too."""
        self._points.clear()
        self._counts.clear()
        self.databases.clear()
        if self._file is not None:
            self._file.truncate(0)
            self._file.flush()

    def close(self) -> None:
        """Close the append file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_points(data_dir: str | os.PathLike[str]) -> list[str]:
    """Distinct points persisted in a node's data dir, for counting after a run."""
    store = PointStore()
    path = Path(data_dir) / POINTS_FILE
    if path.exists():
        store._load(path)
    return store.lines()


# --------------------------------------------------------------------------- injection


@dataclass(slots=True)
class _Rule:
    """A fault or delay applied to the next ``remaining`` matching requests (None: until cleared)."""

    remaining: int | None
    paths: tuple[str, ...] | None
    methods: tuple[str, ...] | None
    status: int = 0
    body: bytes = b""
    headers: Headers = field(default_factory=list)
    bare: bool = False
    abort: bool = False
    reset: bool = False  # read the request, then reset the connection without answering
    secs: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.paths is None:
            return True
        return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in self.paths)

    def describe(self) -> dict[str, Any]:
        return {
            "remaining": self.remaining,
            "paths": list(self.paths) if self.paths is not None else None,
            "methods": list(self.methods) if self.methods is not None else None,
            "status": self.status,
            "secs": self.secs,
            "abort": self.abort,
            "reset": self.reset,
        }


def _take(rules: list[_Rule], method: str, path: str) -> _Rule | None:
    """Pop one use of the first matching rule, dropping it once used up."""
    for index, rule in enumerate(rules):
        if rule.matches(method, path):
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del rules[index]
            return rule
    return None


def _rule_from_json(spec: dict[str, Any]) -> _Rule:
    count = spec.get("count", 1)
    if count is not None and (not isinstance(count, int) or count < 1):
        raise RequestError(400, "count must be a positive integer or null (until cleared)")
    paths = spec.get("paths")
    methods = spec.get("methods")
    raw_headers = spec.get("headers") or {}
    pairs = list(raw_headers.items()) if isinstance(raw_headers, dict) else list(raw_headers)
    headers: Headers = []
    for pair in pairs:
        name, value = str(pair[0]), str(pair[1])
        if not _TOKEN_RE.fullmatch(name) or "\n" in value or "\r" in value:
            raise RequestError(400, f"invalid header {name!r}")
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    body = spec.get("body", "")
    if not isinstance(body, str):
        body = json.dumps(body)
    try:
        secs = float(spec.get("secs", 0.0))
        status = int(spec.get("status", 0))
    except (TypeError, ValueError):
        raise RequestError(400, "secs must be a number and status an integer") from None
    if not math.isfinite(secs) or secs < 0:
        raise RequestError(400, "secs must be a finite number >= 0")
    return _Rule(
        remaining=count,
        paths=tuple(paths) if paths is not None else None,
        methods=tuple(m.upper() for m in methods) if methods is not None else None,
        status=status,
        body=body.encode(),
        headers=headers,
        bare=bool(spec.get("bare", False)),
        abort=bool(spec.get("abort", False)),
        reset=bool(spec.get("reset", False)),
        secs=secs,
    )


# --------------------------------------------------------------------------- helpers


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _params(raw: bytes | str) -> dict[str, str]:
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    return dict(parse_qsl(text, keep_blank_values=True))


def _header(scope: Scope, name: bytes) -> bytes | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in {"1", "true", "yes", "on"}


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or RequestError(413) as soon as it exceeds ``limit``."""
    chunks: list[bytes] = []
    size = 0
    for _ in range(limit + 2):  # every non-final message carries at least one byte
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "request entity too large", [(b"connection", b"close")])
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _reset_after_read(receive: Receive) -> None:
    """Read the whole request, then drop the connection with a TCP reset and no answer.

    A node whose request handling is broken behind a healthy ``/health`` looks
    like this.  uvicorn's ``receive`` is bound to the request cycle, which
    holds the connection's transport; in-process (no transport) it raises.
    """
    await read_body(receive, DEFAULT_MAX_BODY_BYTES)
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionResetError("simulated reset after reading the request")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    for _ in range(2):  # let uvicorn see the connection lost, so it sends no 500 of its own
        await asyncio.sleep(0)


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body without letting a small bomb grow past ``limit``."""
    decoder = zlib.decompressobj(wbits=31)
    try:
        data = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(400, f"invalid gzip body: {exc}") from None
    if len(data) > limit:
        raise RequestError(413, "request entity too large", [(b"connection", b"close")])
    if not decoder.eof:
        raise RequestError(400, "invalid gzip body: unexpected end of stream")
    return data


def stream_chunk(offset: int, size: int) -> bytes:
    """``size`` bytes of the repeating stream pattern starting at absolute ``offset``."""
    start = offset % len(STREAM_PATTERN)
    reps = (start + size) // len(STREAM_PATTERN) + 1
    return (STREAM_PATTERN * reps)[start : start + size]


# --------------------------------------------------------------------------- the app


class NodeApp:
    """The ASGI app of one simulated node; all its state lives on the instance."""

    def __init__(
        self,
        *,
        name: str = "node",
        state: str = "active",
        peer: str | None = None,
        sync_secs: float | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        fsync: bool = False,
        clock: Callable[[], float] = time.monotonic,
        replicas: Sequence[str] = (),
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        self.name = name
        self.peer = peer or None
        self.max_body_bytes = max_body_bytes
        self.store = PointStore(Path(data_dir) if data_dir is not None else None, fsync=fsync)
        self.requests: Counter[str] = Counter()
        self.fail_rules: list[_Rule] = []
        self.delay_rules: list[_Rule] = []
        self._clock = clock
        self._state = "active"
        self._sync_until: float | None = None
        self._unhung = asyncio.Event()
        self._static: Headers = [
            (b"x-influxdb-version", VERSION.encode()),
            (b"x-influxdb-build", b"OSS"),
            (b"x-sim-node", name.encode("latin-1", "replace")),
        ]
        self.set_state(state, sync_secs=sync_secs)
        self.replicator = Replicator(replicas) if replicas else None
        self._catch_up: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- state

    @property
    def state(self) -> str:
        """Current state; a sync deadline that has passed turns the node active."""
        if self._sync_until is not None and self._clock() >= self._sync_until:
            self._sync_until = None
            if self._state in ("syncing", "joining"):
                self._state = "active"
        return self._state

    def set_state(self, state: str, *, sync_secs: float | None = None) -> None:
        """Move to ``state``; with ``sync_secs`` a syncing/joining node turns active after that long."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        self._state = state
        self._sync_until = self._clock() + sync_secs if sync_secs is not None else None
        if state == "hang":
            self._unhung.clear()
        else:
            self._unhung.set()

    def describe(self) -> dict[str, Any]:
        state = self.state
        remaining = None if self._sync_until is None else max(0.0, self._sync_until - self._clock())
        return {
            "state": state,
            "name": self.name,
            "peer": self.peer,
            "pid": os.getpid(),
            "version": VERSION,
            "sync_remaining_secs": remaining,
            "replication": None if self.replicator is None else self.replicator.describe(),
        }

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        for _ in range(2):  # startup, then shutdown
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start_replication()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._catch_up is not None:
                    self._catch_up.cancel()
                if self.replicator is not None:
                    await self.replicator.aclose()
                self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start_replication(self) -> None:
        """Syncing until the peers' points are in, as a (re)started cluster member is."""
        if self.replicator is None:
            return
        self.replicator.start()
        if self._state == "active":
            self.set_state("syncing")
            self._catch_up = asyncio.create_task(self._sync_from_peers())

    async def _sync_from_peers(self) -> None:
        assert self.replicator is not None
        await self.replicator.catch_up(self._store_batch)
        if self._state == "syncing" and self._sync_until is None:  # unless a test moved it meanwhile
            self.set_state("active")

    def _store_batch(self, batch: Batch) -> None:
        self.store.add(batch.db, batch.rp, parse_lines("\n".join(batch.lines), precision="n", now_ns=0))

    async def _internal(self, path: str, method: str, receive: Receive, send: Send, rid: bytes) -> None:
        """The cluster-internal API: replicated writes in, a full copy out."""
        if path == REPLICATE_PATH and method == "POST":
            try:
                self._store_batch(Batch.from_json(await read_body(receive, self.max_body_bytes)))
            except (ValueError, LineProtocolError) as exc:
                raise RequestError(400, f"invalid replication batch: {exc}") from None
            await self._respond(send, rid, 204)
        elif path == SYNC_PATH and method == "GET":
            await self._respond(send, rid, 200, snapshot_body(self.store.records()), _JSON)
        else:
            raise RequestError(405, "method not allowed")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        rid = str(uuid.uuid4()).encode()
        try:
            if path in CONTROL_PATHS:
                await self._control(path, method, scope, receive, send, rid)
                return
            self.requests[path] += 1
            probe = path.startswith("/_sim/")
            if not probe and self._state == "hang":
                await self._hang()
            if self.delay_rules:
                delay = _take(self.delay_rules, method, path)
                if delay is not None:
                    await asyncio.sleep(delay.secs)
            if self.fail_rules:
                fault = _take(self.fail_rules, method, path)
                if fault is not None:
                    if fault.reset:
                        await _reset_after_read(receive)
                    else:
                        await self._canned(fault, send, rid)
                    return
            if probe:
                await self._probe(path, method, scope, receive, send, rid)
            elif path == "/ping":
                await self._ping(method, send, rid)
            elif path == "/write":
                await self._write(method, scope, receive, send, rid)
            elif self.replicator is not None and path in (REPLICATE_PATH, SYNC_PATH):
                await self._internal(path, method, receive, send, rid)
            elif path == "/query":
                await self._query(method, scope, receive, send, rid)
            elif path == "/health":
                await self._health(method, send, rid)
            elif path == "/health/ready":
                await self._ready(method, send, rid)
            else:
                raise RequestError(404, "not found")
        except RequestError as exc:
            await self._error(send, rid, exc.status, exc.message, exc.headers)
        except ClientGone:
            return

    async def _hang(self) -> None:
        """Stall until a control call moves the node out of ``hang`` (or the task is cancelled)."""
        while self._state == "hang":  # re-checked after each wake-up; ends when un-hung
            await self._unhung.wait()

    # ----------------------------------------------------------------- responses

    async def _respond(
        self,
        send: Send,
        rid: bytes,
        status: int,
        body: bytes = b"",
        content_type: bytes | None = None,
        extra: Headers | None = None,
    ) -> None:
        headers = [*self._static, (b"request-id", rid), (b"x-request-id", rid)]
        if content_type is not None:
            headers.append((b"content-type", content_type))
        if status != 204:
            headers.append((b"content-length", str(len(body)).encode()))
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Send, rid: bytes, status: int, message: str, extra: Headers) -> None:
        headers = [(b"x-influxdb-error", message.encode("latin-1", "replace")), *extra]
        await self._respond(send, rid, status, _json({"error": message}), _JSON, headers)

    async def _canned(self, rule: _Rule, send: Send, rid: bytes) -> None:
        if rule.bare:
            headers: Headers = [(b"x-sim-node", self._static[2][1])]
        else:
            headers = [*self._static, (b"request-id", rid), (b"x-request-id", rid)]
        names = {name for name, _ in rule.headers}
        if rule.body and b"content-type" not in names:
            kind = _JSON if rule.body[:1] in (b"{", b"[") else b"text/plain; charset=utf-8"
            headers.append((b"content-type", kind))
        if b"content-length" not in names and rule.status not in (204, 304):
            declared = len(rule.body) + (1024 if rule.abort else 0)
            headers.append((b"content-length", str(declared).encode()))
        headers.extend(rule.headers)
        await send({"type": "http.response.start", "status": rule.status or 500, "headers": headers})
        # With ``abort`` the body stops short of Content-Length and the server closes the connection.
        await send({"type": "http.response.body", "body": rule.body, "more_body": rule.abort})

    # ----------------------------------------------------------------- InfluxDB endpoints

    async def _ping(self, method: str, send: Send, rid: bytes) -> None:
        if method not in ("GET", "HEAD"):
            raise RequestError(405, "method not allowed")
        await self._respond(send, rid, 204)

    def _not_serving_message(self, state: str) -> str:
        return f"node is {state.capitalize()}, not accepting traffic"

    async def _health(self, method: str, send: Send, rid: bytes) -> None:
        if method not in ("GET", "HEAD"):
            raise RequestError(405, "method not allowed")
        state = self.state
        if state == "active":
            status, body = 200, {"status": "pass", "message": "ready for queries and writes"}
        elif state in NOT_SERVING:
            status, body = 503, {"status": "warn", "message": self._not_serving_message(state)}
        else:
            status, body = 503, {"status": "fail", "message": "WAL writer is down"}
        await self._respond(send, rid, status, _json(body), _JSON)

    async def _ready(self, method: str, send: Send, rid: bytes) -> None:
        if method not in ("GET", "HEAD"):
            raise RequestError(405, "method not allowed")
        state = self.state
        if state == "active":
            status, body = 200, {"status": "pass", "message": "ready for queries and writes"}
        elif state in NOT_SERVING:
            status, body = 503, {"status": "fail", "message": self._not_serving_message(state)}
        else:
            status, body = 503, {"status": "fail", "message": "WAL writer is down"}
        await self._respond(send, rid, status, _json(body), _JSON)

    async def _write(self, method: str, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        if method != "POST":
            raise RequestError(405, "method not allowed")
        state = self.state
        if state in ("draining", "leaving"):
            extra: Headers = [(b"retry-after", b"5")]
            if self.peer:
                extra.append((b"x-hyperbytedb-redirect", self.peer.encode()))
            await self._respond(send, rid, 503, extra=extra)
            return
        if state in ("syncing", "joining"):
            await self._respond(send, rid, 503)
            return
        if state == "failed":
            raise RequestError(500, "WAL writer is down")
        params = _params(scope["query_string"])
        db = params.get("db", "")
        if not db:
            raise RequestError(400, "database is required")
        if "\t" in db or "\n" in db:
            raise RequestError(400, "invalid database name")
        rp = params.get("rp", "")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestError(413, "request entity too large", [(b"connection", b"close")])
        body = await read_body(receive, self.max_body_bytes)
        encoding = (_header(scope, b"content-encoding") or b"").strip().lower()
        if encoding == b"gzip":
            body = gunzip(body, self.max_body_bytes)
        elif encoding not in (b"", b"identity"):
            raise RequestError(415, f"unsupported content encoding {encoding.decode('latin-1')!r}")
        try:
            text = body.decode("utf-8")
            points = parse_lines(text, precision=params.get("precision", "n"), now_ns=time.time_ns())
        except UnicodeDecodeError:
            raise RequestError(400, "body is not valid UTF-8") from None
        except LineProtocolError as exc:
            raise RequestError(400, str(exc)) from None
        self.store.add(db, rp, points)
        if self.replicator is not None:
            await self.replicator.replicate(Batch(db, rp, tuple(point.line() for point in points)))
        await self._respond(send, rid, 204)

    async def _query(self, method: str, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        if method not in ("GET", "POST"):
            raise RequestError(405, "method not allowed")
        state = self.state
        if state in NOT_SERVING:
            raise RequestError(503, self._not_serving_message(state))
        params = _params(scope["query_string"])
        if method == "POST":
            body = await read_body(receive, self.max_body_bytes)
            ctype = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
            if ctype == b"application/x-www-form-urlencoded":
                params.update(_params(body))
        q = params.get("q", "")
        if not q.strip():
            raise RequestError(400, 'missing required parameter "q"')
        db = params.get("db", "")
        epoch = params.get("epoch") or None
        statements = [s.strip() for s in q.split(";") if s.strip()]
        results = [self._statement(i, s, db, epoch) for i, s in enumerate(statements)]
        if not _truthy(params.get("chunked")):
            await self._respond(send, rid, 200, _json({"results": results}), _JSON)
            return
        headers = [*self._static, (b"request-id", rid), (b"x-request-id", rid), (b"content-type", _JSON)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for result in results:
            chunk = _json({"results": [result]}) + b"\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def _statement(self, index: int, statement: str, db: str, epoch: str | None) -> dict[str, Any]:
        """Answer one InfluxQL statement: just enough for clients and tests to see the data."""
        words = statement.upper().split()
        result: dict[str, Any] = {"statement_id": index}
        if words[:2] == ["SHOW", "DATABASES"]:
            values = [[name] for name in sorted(self.store.databases)]
            result["series"] = [{"name": "databases", "columns": ["name"], "values": values}]
        elif words[:2] == ["SHOW", "MEASUREMENTS"]:
            values = [[name] for name in self.store.measurements(db)]
            if values:
                result["series"] = [{"name": "measurements", "columns": ["name"], "values": values}]
        elif words[:2] == ["CREATE", "DATABASE"]:
            match = _CREATE_DB_RE.search(statement)
            if match:
                self.store.databases.add(match.group(1).strip('"'))
        elif words[:1] == ["SELECT"]:
            match = _FROM_RE.search(statement)
            if match:
                measurement = match.group(1).split(".")[-1].strip('"')
                count = self.store.count(db or None, measurement)
                if count:
                    stamp: Any = 0 if epoch else "1970-01-01T00:00:00Z"
                    result["series"] = [
                        {"name": measurement, "columns": ["time", "count"], "values": [[stamp, count]]}
                    ]
        return result

    # ----------------------------------------------------------------- /_sim/ probes

    async def _probe(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send, rid: bytes
    ) -> None:
        if path == "/_sim/echo" or path.startswith("/_sim/echo/"):
            await self._echo(method, scope, receive, send, rid)
        elif path == "/_sim/headers":
            pairs: Headers = []
            for key, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
                if key != "h":
                    continue
                name, sep, text = value.partition(":")
                text = text.strip()
                if not sep or not _TOKEN_RE.fullmatch(name) or "\r" in text or "\n" in text:
                    raise RequestError(400, f"invalid header spec {value!r}; expected Name:Value")
                pairs.append((name.lower().encode("latin-1"), text.encode("latin-1")))
            await self._respond(send, rid, 200, b"ok", b"text/plain; charset=utf-8", pairs)
        elif path == "/_sim/stream":
            await self._stream(scope, receive, send, rid)
        else:
            raise RequestError(404, "not found")

    async def _echo(self, method: str, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        body = await read_body(receive, self.max_body_bytes)
        raw_path = scope.get("raw_path")
        description = {
            "node": self.name,
            "method": method,
            "http_version": scope.get("http_version"),
            "path": scope["path"],
            "raw_path": raw_path.decode("latin-1") if raw_path is not None else None,
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_b64": base64.b64encode(body).decode(),
            "body_len": len(body),
        }
        await self._respond(send, rid, 200, _json(description), _JSON)

    async def _stream(self, scope: Scope, receive: Receive, send: Send, rid: bytes) -> None:
        params = _params(scope["query_string"])
        try:
            total = int(params.get("bytes", "0"))
            chunk = int(params.get("chunk", "65536"))
            delay = float(params.get("delay", "0"))
        except ValueError:
            raise RequestError(400, "bytes and chunk must be integers, delay a number") from None
        if total < 0 or not 0 < chunk <= MAX_STREAM_CHUNK or not math.isfinite(delay) or delay < 0:
            raise RequestError(400, f"need bytes >= 0, 0 < chunk <= {MAX_STREAM_CHUNK}, delay >= 0")
        headers = [
            *self._static,
            (b"request-id", rid),
            (b"x-request-id", rid),
            (b"content-type", b"application/octet-stream"),
        ]
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            offset = 0
            for _ in range(-(-total // chunk)):  # exactly ceil(total / chunk) chunks
                # uvicorn's send() does not suspend once the client is gone (nor while its
                # buffer has room), so yield every chunk: the disconnect watcher gets to run
                # and other requests are not starved by one big stream.
                await asyncio.sleep(delay)
                if gone.done():
                    return
                size = min(chunk, total - offset)
                await send(
                    {"type": "http.response.body", "body": stream_chunk(offset, size), "more_body": True}
                )
                offset += size
            await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone

    # ----------------------------------------------------------------- /_sim/ control

    async def _control(
        self, path: str, method: str, scope: Scope, receive: Receive, send: Send, rid: bytes
    ) -> None:
        params = _params(scope["query_string"])
        spec: dict[str, Any] = {}
        if method in ("POST", "PUT"):
            body = await read_body(receive, 1024 * 1024)
            if body.strip():
                try:
                    loaded = json.loads(body)
                except ValueError:
                    raise RequestError(400, "body must be JSON") from None
                if not isinstance(loaded, dict):
                    raise RequestError(400, "body must be a JSON object")
                spec = loaded
        result: Any
        if path == "/_sim/state":
            if method in ("POST", "PUT"):
                self._apply_state(spec)
            result = self.describe()
        elif path == "/_sim/points":
            if method == "DELETE":
                self.store.clear()
            db = params.get("db") or None
            result = {"count": self.store.count(db)}
            if not _truthy(params.get("count_only")):
                result["points"] = self.store.lines(db)
        elif path in ("/_sim/fail", "/_sim/delay"):
            rules = self.fail_rules if path == "/_sim/fail" else self.delay_rules
            if method == "DELETE":
                rules.clear()
            elif method in ("POST", "PUT"):
                try:
                    rules.append(_rule_from_json(spec))
                except (TypeError, AttributeError, IndexError) as exc:
                    raise RequestError(400, f"invalid rule: {exc}") from None
            result = {"rules": [rule.describe() for rule in rules]}
        elif path == "/_sim/requests":
            if method == "DELETE":
                self.requests.clear()
            result = {"total": sum(self.requests.values()), "paths": dict(self.requests)}
        else:  # /_sim/reset
            self.fail_rules.clear()
            self.delay_rules.clear()
            self.requests.clear()
            self.set_state("active")
            result = self.describe()
        await self._respond(send, rid, 200, _json(result), _JSON)

    def _apply_state(self, spec: dict[str, Any]) -> None:
        state = spec.get("state")
        if state not in STATES:
            raise RequestError(400, f"state must be one of {', '.join(STATES)}")
        sync_secs = spec.get("sync_secs")
        if sync_secs is not None and (not isinstance(sync_secs, int | float) or sync_secs < 0):
            raise RequestError(400, "sync_secs must be a number >= 0")
        if "peer" in spec:
            self.peer = str(spec["peer"]) or None
        self.set_state(state, sync_secs=sync_secs)


async def _wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone (a stream stops generating bytes nobody reads)."""
    for _ in range(1_000_000):  # only empty http.request messages can arrive before the disconnect
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def create_node_app(
    *,
    name: str = "node",
    state: str = "active",
    peer: str | None = None,
    sync_secs: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    fsync: bool = False,
    clock: Callable[[], float] = time.monotonic,
    replicas: Sequence[str] = (),
) -> NodeApp:
    """Build a node app for in-process use (``httpx.ASGITransport``) or for uvicorn."""
    return NodeApp(
        name=name,
        state=state,
        peer=peer,
        sync_secs=sync_secs,
        data_dir=data_dir,
        max_body_bytes=max_body_bytes,
        fsync=fsync,
        clock=clock,
        replicas=replicas,
    )


# --------------------------------------------------------------------------- CLI


def loopback_host(value: str) -> str:
    """argparse type: an IP literal on the loopback network (the simulator never leaves it)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address") from None
    if not address.is_loopback:
        raise argparse.ArgumentTypeError(f"{value} is not a loopback address (127.0.0.0/8 or ::1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.node", description=__doc__.split("\n")[0])
    parser.add_argument("--host", type=loopback_host, default="127.0.0.2")
    parser.add_argument("--port", type=int, default=8086)
    parser.add_argument("--state", choices=STATES, default="active")
    parser.add_argument("--sync-secs", type=float, default=None, help="turn active after this long")
    parser.add_argument("--data-dir", default=None, help="persist accepted points here")
    parser.add_argument("--name", default=None, help="node name (X-Sim-Node); default HOST:PORT")
    parser.add_argument("--peer", default=None, help="address sent in X-Hyperbytedb-Redirect")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--fsync", action="store_true", help="fsync the points file on every write")
    parser.add_argument(
        "--replicate-to",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer node sharing this node's data (repeatable): writes are copied to it, "
        "and the node syncs from it at start",
    )
    parser.add_argument("--keep-alive", type=int, default=60, help="idle keep-alive timeout (s)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--tls-cert", default=None, help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve one node under uvicorn (uvloop + httptools, no access log, no Server header)."""
    import uvicorn

    args = build_parser().parse_args(argv)
    app = create_node_app(
        name=args.name or f"{args.host}:{args.port}",
        state=args.state,
        peer=args.peer,
        sync_secs=args.sync_secs,
        data_dir=args.data_dir,
        max_body_bytes=args.max_body_bytes,
        fsync=args.fsync,
        replicas=[peer for item in args.replicate_to for peer in item.split(",") if peer],
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=True,
        log_level=args.log_level,
        timeout_keep_alive=args.keep_alive,
        timeout_graceful_shutdown=2,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )
    uvicorn.Server(config).run()
    app.store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
