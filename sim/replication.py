"""Replication between simulated nodes, the way a HyperbyteDB cluster shares its data.

A real cluster copies every accepted write to every node and lets a node that
was away catch up (its ``/health`` says Syncing meanwhile) before it serves
again.  Without this a demo write lands on one node and a query on another
answers "no data", which looks like a proxy that loses points.

The design, per node:

- a write the node accepts is pushed to each peer (``POST /internal/replicate``)
  before the client gets its 204; a peer that does not take it keeps the
  batch in that peer's ordered backlog, which a background task delivers in
  order until the peer takes it (a point's key makes redelivery harmless);
- a node that starts with peers turns Syncing, pulls every point each
  reachable peer holds (``GET /internal/sync/points``) and only then turns
  Active.

Points are keyed by series and timestamp (see :class:`sim.node.PointStore`), so
a point stored on three nodes is still one distinct point when counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx

REPLICATE_PATH = "/internal/replicate"
SYNC_PATH = "/internal/sync/points"
PUSH_TIMEOUT_SECS = 1.0
SYNC_TIMEOUT_SECS = 5.0
RETRY_SECS = 0.5
MAX_BACKLOG = 100_000  # batches per peer; beyond it the oldest go (the peer resyncs on restart)
SYNC_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Batch:
    """Points accepted together, as line protocol with nanosecond timestamps."""

    db: str
    rp: str
    lines: tuple[str, ...]

    def to_json(self) -> bytes:
        return json.dumps({"db": self.db, "rp": self.rp, "lines": list(self.lines)}).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Batch:
        """Raise ValueError for anything but a well-formed batch."""
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        db, rp, lines = data.get("db"), data.get("rp", ""), data.get("lines")
        if not isinstance(db, str) or not isinstance(rp, str) or not isinstance(lines, list):
            raise ValueError("expected {db: str, rp: str, lines: [str]}")
        if not all(isinstance(line, str) and "\n" not in line for line in lines):
            raise ValueError("lines must be single-line strings")
        return cls(db, rp, tuple(lines))


class PeerLink:
    """One peer and the batches it has not taken yet, delivered in order."""

    def __init__(self, address: str, client: httpx.AsyncClient) -> None:
        self.address = address
        self._client = client
        self._backlog: collections.deque[Batch] = collections.deque(maxlen=MAX_BACKLOG)
        self._pending = asyncio.Event()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def send(self, batch: Batch) -> None:
        """Deliver at once when the peer is in step; otherwise queue behind what it missed."""
        if not self._backlog and await self._push(batch):
            return
        self._backlog.append(batch)
        self._pending.set()

    async def run(self) -> None:
        """Deliver the backlog in order, retrying while the peer is away."""
        while True:
            await self._pending.wait()
            while self._backlog:
                if await self._push(self._backlog[0]):
                    self._backlog.popleft()
                else:
                    await asyncio.sleep(RETRY_SECS)
            self._pending.clear()

    async def _push(self, batch: Batch) -> bool:
        try:
            response = await self._client.post(
                f"http://{self.address}{REPLICATE_PATH}",
                content=batch.to_json(),
                headers={"content-type": "application/json"},
                timeout=PUSH_TIMEOUT_SECS,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 204


class Replicator:
    """A node's replication to its peers: pushes, backlogs and the catch-up at start."""

    def __init__(self, peers: Sequence[str], *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(transport=transport, trust_env=False)
        self.links = [PeerLink(address, self._client) for address in peers]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(link.run()) for link in self.links]

    async def replicate(self, batch: Batch) -> None:
        """Hand ``batch`` to every peer (those that are away get it from their backlog)."""
        if batch.lines and self.links:
            await asyncio.gather(*(link.send(batch) for link in self.links))

    async def catch_up(self, store_batch: Callable[[Batch], None]) -> int:
        """Pull every point the reachable peers hold; the number of peers that answered."""
        for attempt in range(SYNC_ATTEMPTS):
            answered = 0
            for batches in await asyncio.gather(*(self._snapshot(link) for link in self.links)):
                if batches is None:
                    continue
                answered += 1
                for batch in batches:
                    store_batch(batch)
            if answered or attempt == SYNC_ATTEMPTS - 1:
                return answered
            await asyncio.sleep(RETRY_SECS)  # a cluster starting at once: peers may be a moment behind
        return 0

    async def _snapshot(self, link: PeerLink) -> list[Batch] | None:
        try:
            response = await self._client.get(f"http://{link.address}{SYNC_PATH}", timeout=SYNC_TIMEOUT_SECS)
            if response.status_code != 200:
                return None
            return [Batch.from_json(json.dumps(item).encode()) for item in response.json()["batches"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    def describe(self) -> list[dict[str, object]]:
        return [{"peer": link.address, "backlog": link.backlog} for link in self.links]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()


def snapshot_body(records: Iterable[tuple[str, str, str]]) -> bytes:
    """Every stored point grouped into batches per (db, rp), as ``GET /internal/sync/points`` answers."""
    grouped: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for db, rp, line in records:
        grouped[(db, rp)].append(line)
    batches = [{"db": db, "rp": rp, "lines": lines} for (db, rp), lines in grouped.items()]
    return json.dumps({"batches": batches}).encode()
