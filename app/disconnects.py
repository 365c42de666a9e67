"""Noticing that a client went away while its request is still being served.

uvicorn reports a disconnect through ``receive()``, which a request stops
calling once its body is read; a request that then waits (held for a
backend, or for a slow query) would keep its backend busy and its buffers
for a client nobody answers.  So a task awaits ``receive()`` for it and
cancels the request when the client leaves.

Most requests end within milliseconds and never need one.  A request gets
its watcher once it has run for ``after`` seconds; rather than a timer per
request (created and cancelled on every request), one timer sweeps the
running requests in the order they started, while any is running.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from starlette.types import Receive

WATCH_AFTER_SECS = 0.05


class Watched(Protocol):
    """What the watch needs of a request."""

    receive: Receive
    task: asyncio.Task[Any]
    watcher: asyncio.Task[None] | None
    completing: bool  # the response is complete or being completed: a disconnect is no news
    client_gone: bool


class DisconnectWatch:
    """Gives every request that runs longer than ``after`` seconds a disconnect watcher."""

    def __init__(self, after: float = WATCH_AFTER_SECS) -> None:
        self._after = after
        self._running: dict[Watched, float] = {}  # request -> loop time it was added, oldest first
        self._timer: asyncio.TimerHandle | None = None

    def add(self, request: Watched, loop: asyncio.AbstractEventLoop) -> None:
        self._running[request] = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self._after, self._sweep, loop)

    def discard(self, request: Watched) -> None:
        """The request is over: forget it, and stop its watcher if it has one."""
        self._running.pop(request, None)
        if request.watcher is not None:
            request.watcher.cancel()

    def __len__(self) -> int:
        return len(self._running)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        running = self._running
        started_before = loop.time() - self._after
        while running:
            request, added = next(iter(running.items()))
            if added > started_before:
                self._timer = loop.call_at(added + self._after, self._sweep, loop)
                return
            del running[request]
            request.watcher = loop.create_task(_watch(request))


async def _watch(request: Watched) -> None:
    """Cancel the request's task when its client goes away, freeing what it holds."""
    # A request without a body never read its (empty) request message: skip it.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    # uvicorn also reports a disconnect once the response is complete.
    if not request.completing:
        request.client_gone = True
        request.task.cancel()
