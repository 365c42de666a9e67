"""Steady mixed load through the proxy, and a record of everything the clients saw.

Each client is its own ``httpx.AsyncClient`` with one keep-alive connection,
like a fleet of Telegraf agents and dashboards: it writes a small batch of
uniquely timestamped points or runs a query, pauses, and goes again.  Every
request becomes a :class:`Sample`; a write's points count as acknowledged
only when the proxy answered 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from chaos.harness import DB, MEASUREMENT

MAX_REQUESTS_PER_CLIENT = 200_000  # a bound, never reached at the paces used here
CLIENT_TIMEOUT_SECS = 30.0  # longer than any hold or request timeout a scenario sets


@dataclass(slots=True)
class Sample:
    """One request as its client saw it (times are ``time.monotonic``)."""

    kind: str  # "write" | "query" | "stream"
    client: int
    start: float
    end: float
    status: int | None  # None: a transport error (see ``error``)
    error: str | None = None
    node: str | None = None  # X-Sim-Node of the node that answered, when relayed
    points: tuple[int, ...] = ()  # timestamps a write carried
    body: bytes = b""  # kept for failures only (their JSON error)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def failure_key(self) -> str:
        return str(self.status) if self.status is not None else (self.error or "error")


class PointSource:
    """Unique nanosecond timestamps for every point of a run."""

    def __init__(self) -> None:
        self._base = (time.time_ns() // 1_000_000_000) * 1_000_000_000
        self._next = 0

    def take(self, count: int) -> list[int]:
        first = self._next
        self._next += count
        return [self._base + first + i for i in range(count)]


class Load:
    """``clients`` concurrent clients until :meth:`stop` (or ``max_secs``)."""

    def __init__(
        self,
        base_url: str,
        *,
        clients: int = 12,
        pause: float = 0.03,
        write_share: float = 0.7,
        points_per_write: int = 5,
        db: str = DB,
        max_secs: float = 900.0,
        seed: int = 7,
    ) -> None:
        self.base_url = base_url
        self.clients = clients
        self.pause = pause
        self.write_share = write_share
        self.points_per_write = points_per_write
        self.db = db
        self.max_secs = max_secs
        self.samples: list[Sample] = []
        self.points = PointSource()
        self._random = random.Random(seed)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    def stop(self) -> None:
        self._stop.set()

    async def join(self, timeout: float = CLIENT_TIMEOUT_SECS + 5) -> None:
        """Wait for every client to finish its current request; cancel stragglers after ``timeout``."""
        self.stop()
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, index: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        deadline = time.monotonic() + self.max_secs
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=CLIENT_TIMEOUT_SECS, limits=limits, trust_env=False
        ) as http:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
                if self._random.random() < self.write_share:
                    await self._write(http, index)
                else:
                    await self._query(http, index)
                with contextlib.suppress(TimeoutError):
                    # Jittered pause; wakes at once on stop.
                    async with asyncio.timeout(self.pause * (0.5 + self._random.random())):
                        await self._stop.wait()

    async def _write(self, http: httpx.AsyncClient, client: int) -> None:
        stamps = self.points.take(self.points_per_write)
        lines = []
        for stamp in stamps:
            self._seq += 1
            lines.append(f"{MEASUREMENT},client={client} seq={self._seq}i {stamp}")
        body = ("\n".join(lines) + "\n").encode()
        await self._send(
            http, "write", client, "POST", "/write", params={"db": self.db, "precision": "n"},
            content=body, points=tuple(stamps),
        )  # fmt: skip

    async def _query(self, http: httpx.AsyncClient, client: int) -> None:
        params = {"db": self.db, "q": f"SELECT count(seq) FROM {MEASUREMENT}"}
        await self._send(http, "query", client, "GET", "/query", params=params)

    async def _send(
        self,
        http: httpx.AsyncClient,
        kind: str,
        client: int,
        method: str,
        path: str,
        *,
        params: dict[str, str],
        content: bytes | None = None,
        points: tuple[int, ...] = (),
    ) -> None:
        start = time.monotonic()
        try:
            response = await http.request(method, path, params=params, content=content)
        except httpx.HTTPError as exc:
            self.samples.append(Sample(kind, client, start, time.monotonic(), None, type(exc).__name__))
            return
        sample = Sample(
            kind, client, start, time.monotonic(), response.status_code,
            node=response.headers.get("x-sim-node"), points=points,
        )  # fmt: skip
        if not sample.ok:
            sample.body = response.content[:500]
        self.samples.append(sample)


# --------------------------------------------------------------------------- summaries


def failures(samples: Iterable[Sample]) -> Counter[str]:
    """Client-visible failures by status code or transport exception type."""
    return Counter(s.failure_key for s in samples if not s.ok)


def acked_points(samples: Iterable[Sample]) -> set[int]:
    return {stamp for s in samples if s.kind == "write" and s.ok for stamp in s.points}


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]
