"""The set of known backends, selection among the routable ones and waiting for one.

Discovery adds and removes backends, the health checker, the forwarding
path and outlier detection change whether they are routable, and requests
pick from the routable ones.  All of it runs on one event loop, so the
routable list is rebuilt on each change and a pick is a few list
operations with no lock and no await.

Two selection policies: round-robin (the default, as the original proxy),
and least-request -- the fewer requests in flight of two routable backends
drawn at random, Envoy's and Finagle's answer to requests whose cost varies
a thousandfold (a time-series query takes a millisecond or a minute).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from app.backend import Backend, Ejection, Health, Transition

TransitionListener = Callable[[Backend, Transition], None]
LbPolicy = Literal["round_robin", "least_request"]


@dataclass(frozen=True, slots=True)
class PoolChange:
    """What a reconcile did, so callers can probe newcomers and log departures."""

    added: tuple[Backend, ...]
    removed: tuple[Backend, ...]


class BackendPool:
    def __init__(
        self,
        port: int,
        *,
        scheme: str = "http",
        clock: Callable[[], float] = time.time,
        lb_policy: LbPolicy = "round_robin",
        rng: random.Random | None = None,
    ) -> None:
        self._port = port
        self._scheme = scheme
        self._clock = clock
        self._rng = rng or random.Random()
        if lb_policy == "least_request":
            self.pick = self._pick_least_request  # type: ignore[method-assign]
        self._backends: dict[str, Backend] = {}
        self._routable: list[Backend] = []
        self._next = 0
        self._became_routable = asyncio.Event()
        self._listeners: list[TransitionListener] = []

    # -- membership -----------------------------------------------------

    def reconcile(self, addresses: Iterable[str]) -> PoolChange:
        """Make the pool hold exactly ``addresses``; known ones keep their state."""
        wanted = dict.fromkeys(addresses)
        removed = tuple(b for addr, b in self._backends.items() if addr not in wanted)
        added = tuple(
            Backend(addr, self._port, self._scheme) for addr in wanted if addr not in self._backends
        )
        for backend in removed:
            del self._backends[backend.address]
        for backend in added:
            self._backends[backend.address] = backend
        if added or removed:
            self._rebuild()
        return PoolChange(added, removed)

    def get(self, address: str) -> Backend | None:
        return self._backends.get(address)

    def backends(self) -> list[Backend]:
        """A snapshot; members may be removed while a caller iterates it."""
        return list(self._backends.values())

    def __len__(self) -> int:
        return len(self._backends)

    def contains(self, backend: Backend) -> bool:
        return self._backends.get(backend.address) is backend

    # -- health ---------------------------------------------------------

    def add_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    def set_health(self, backend: Backend, health: Health, reason: str) -> bool:
        """Change a backend's health; returns whether it changed."""
        if backend.health is health:
            return False
        transition = backend.record_transition(health, reason, self._clock())
        if self.contains(backend):
            self._rebuild()
        for listener in self._listeners:
            listener(backend, transition)
        return True

    def eject(self, backend: Backend, reason: str) -> None:
        """Passive ejection: a forward could not connect, so stop routing there now.

        The failure counts as a failed probe, so HEALTH_RISE good probes are
        needed before it serves again.
        """
        backend.consecutive_successes = 0
        backend.consecutive_failures += 1
        self.set_health(backend, Health.DOWN, reason)

    def mark_draining(self, backend: Backend, reason: str) -> None:
        """The backend answered a request with a drain 503: believe it as if its probe had said so.

        The next probe decides again.
        """
        backend.consecutive_successes = 0
        self.set_health(backend, Health.DRAINING, reason)

    def set_excluded(self, backend: Backend, excluded: bool) -> None:
        backend.excluded = excluded
        self._rebuild()

    def set_ejection(self, backend: Backend, ejection: Ejection | None) -> None:
        """Outlier detection took the backend out of routing (or let it back in)."""
        backend.ejection = ejection
        if self.contains(backend):
            self._rebuild()

    def _rebuild(self) -> None:
        routable = [b for b in self._backends.values() if b.routable]
        grew = any(b not in self._routable for b in routable)
        self._routable = routable
        if grew:
            # Wake every waiter, then start a fresh event for the next wait.
            self._became_routable.set()
            self._became_routable = asyncio.Event()

    # -- selection ------------------------------------------------------

    @property
    def routable_count(self) -> int:
        return len(self._routable)

    def pick(self, avoid: Collection[Backend] = ()) -> Backend | None:
        """The next routable backend in round-robin order that is not in ``avoid``."""
        routable = self._routable
        count = len(routable)
        start = self._next
        for offset in range(count):
            backend = routable[(start + offset) % count]
            if backend not in avoid:
                self._next = (start + offset + 1) % count
                return backend
        return None

    def _pick_least_request(self, avoid: Collection[Backend] = ()) -> Backend | None:
        """Of two routable backends drawn at random, the one with fewer requests in flight."""
        candidates = self._routable
        if avoid:
            candidates = [b for b in candidates if b not in avoid]
        count = len(candidates)
        if count <= 1:
            return candidates[0] if count else None
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1  # two distinct draws
        a, b = candidates[first], candidates[second]
        return b if b.inflight < a.inflight else a

    async def wait_routable(self, timeout: float) -> bool:
        """Wait until some backend becomes routable; False when ``timeout`` passes first."""
        if timeout <= 0:
            return False
        event = self._became_routable
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True
