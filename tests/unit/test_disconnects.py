"""DisconnectWatch: only requests that outlive the delay get a watcher, and a disconnect cancels them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.disconnects import DisconnectWatch

pytestmark = pytest.mark.anyio


class Request:
    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.watcher: asyncio.Task[None] | None = None
        self.completing = False
        self.client_gone = False
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(self) -> dict[str, Any]:
        return await self.messages.get()


async def _serve(forever: asyncio.Event) -> None:
    await forever.wait()


def _request() -> Request:
    return Request(asyncio.ensure_future(_serve(asyncio.Event())))


async def test_quick_requests_never_get_a_watcher_and_no_timer_outlives_them() -> None:
    loop = asyncio.get_running_loop()
    watch = DisconnectWatch(after=0.05)
    quick = [_request() for _ in range(50)]
    for request in quick:
        watch.add(request, loop)
    for request in quick:
        watch.discard(request)
    await asyncio.sleep(0.1)
    assert len(watch) == 0 and all(r.watcher is None for r in quick)
    for request in quick:
        request.task.cancel()


async def test_a_slow_request_is_watched_and_cancelled_when_its_client_leaves() -> None:
    loop = asyncio.get_running_loop()
    watch = DisconnectWatch(after=0.05)
    slow, stays = _request(), _request()
    watch.add(slow, loop)
    watch.add(stays, loop)
    await asyncio.sleep(0.02)
    assert slow.watcher is None  # not yet: most requests end before the delay
    await asyncio.sleep(0.08)
    assert slow.watcher is not None and stays.watcher is not None and len(watch) == 0
    slow.messages.put_nowait({"type": "http.disconnect"})
    with pytest.raises(asyncio.CancelledError):
        await slow.task
    assert slow.client_gone and not stays.task.done()
    watch.discard(stays)  # the request ended: its watcher goes with it
    await asyncio.sleep(0)
    assert stays.watcher.cancelled()
    stays.task.cancel()


async def test_a_disconnect_after_the_response_completed_is_no_news() -> None:
    loop = asyncio.get_running_loop()
    watch = DisconnectWatch(after=0.01)
    request = _request()
    watch.add(request, loop)
    await asyncio.sleep(0.05)
    assert request.watcher is not None
    request.completing = True
    request.messages.put_nowait({"type": "http.disconnect"})
    await request.watcher
    assert not request.client_gone and not request.task.done()
    request.task.cancel()


async def test_later_requests_are_swept_when_their_own_delay_is_up() -> None:
    loop = asyncio.get_running_loop()
    watch = DisconnectWatch(after=0.1)
    first = _request()
    watch.add(first, loop)
    await asyncio.sleep(0.06)
    second = _request()
    watch.add(second, loop)
    await asyncio.sleep(0.07)  # 0.13 s after the first, 0.07 s after the second
    assert first.watcher is not None and second.watcher is None
    await asyncio.sleep(0.08)
    assert second.watcher is not None
    for request in (first, second):
        watch.discard(request)
        request.task.cancel()


async def test_the_unread_empty_request_message_of_a_bodiless_request_is_skipped() -> None:
    loop = asyncio.get_running_loop()
    watch = DisconnectWatch(after=0.01)
    request = _request()
    request.messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    watch.add(request, loop)
    await asyncio.sleep(0.05)
    assert request.watcher is not None and not request.task.done()
    request.messages.put_nowait({"type": "http.disconnect"})
    with pytest.raises(asyncio.CancelledError):
        await request.task
    assert request.client_gone
