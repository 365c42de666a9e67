"""The access log writer: same lines as the logging formatters, batched, never blocking the loop."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from typing import Any

import httpx
import pytest

from app.access_log import BATCH_LINES, LOGGER_NAME, AccessLog
from app.logs import JsonFormatter, OperatorHandler, TextFormatter, redact_query
from app.metrics import Metrics
from tests.unit.harness import Harness

pytestmark = pytest.mark.anyio

FIELDS = {
    "method": "GET",
    "path": "/a path",
    "query": "db=x&u=admin&p=hunter2",
    "status": 200,
    "outcome": "ok",
    "backend": None,
    "attempts": 1,
    "held_ms": 0.0,
    "duration_ms": 1.25,
    "client": "127.0.0.1",
}


def _record(now: float) -> logging.LogRecord:
    record = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 1, "request", None, None)
    record.created, record.msecs = now, int((now - int(now)) * 1000)
    record.fields = dict(FIELDS)  # type: ignore[attr-defined]
    return record


def _logger(level: int = logging.INFO) -> logging.Logger:
    """A logger outside the global hierarchy, so tests leave logging as they found it."""
    return logging.Logger("access-under-test", level)


@pytest.mark.parametrize(("log_format", "formatter"), [("text", TextFormatter()), ("json", JsonFormatter())])
def test_lines_are_identical_to_the_logging_formatters(log_format: str, formatter: logging.Formatter) -> None:
    access = AccessLog(log_format)
    for now in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5071):
        line = access.line(now, dict(FIELDS))
        assert line == formatter.format(_record(now)) + "\n"
        assert "hunter2" not in line and "u=admin" in line
    if log_format == "json":
        assert json.loads(line)["path"] == "/a path"
    else:
        assert 'path="/a path"' in line and "backend=None" in line


REQUEST_ARGS = ("GET", "/a path", b"db=x&u=admin&p=hunter2", 200, "ok", None, 1, 0.0, 0.00125, "127.0.0.1")


@pytest.mark.parametrize(("log_format", "formatter"), [("text", TextFormatter()), ("json", JsonFormatter())])
async def test_request_lines_formatted_in_a_batch_match_the_logging_formatters(
    log_format: str, formatter: logging.Formatter
) -> None:
    out = io.StringIO()
    access = AccessLog(log_format, stream=out, logger=_logger(), flush_secs=3600)
    access.start()
    access.request(*REQUEST_ARGS)
    access.request("POST", "/write", b"", 204, "ok", "10.0.0.1:8086", 2, 0.0123456, 0.5, None)
    assert out.getvalue() == ""  # only the fields were kept
    access.close()
    first, second = out.getvalue().splitlines(keepends=True)
    expected = formatter.format(_record(time.time())) + "\n"
    if log_format == "json":  # equal but for the time stamp
        assert {**json.loads(first), "ts": ""} == {**json.loads(expected), "ts": ""}
        assert list(json.loads(first)) == list(json.loads(expected))  # the same keys, in the same order
    else:
        assert first.split(" ", 1)[1] == expected.split(" ", 1)[1]
        assert len(first.split(" ", 1)[0]) == len(expected.split(" ", 1)[0])
    assert "hunter2" not in first
    fields = json.loads(second) if log_format == "json" else dict(p.split("=", 1) for p in second.split()[4:])
    assert str(fields["held_ms"]) == "12.3" and str(fields["duration_ms"]) == "500.0"
    assert str(fields["query"]) in ("", '""') and str(fields["client"]) in ("None", "null")


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "/query", b"db=x&q=SELECT+1", 200, "ok", "10.0.0.1:8086", 1, 0.0, 0.00342, "127.0.0.1"),
        ("GET", "/query", b"", 200, "ok", None, 0, 0.25, 1.5, None),
        ("POST", "/write", b"db=x&u=admin&P=Hunter2", 204, "ok", "[fd00::1]:8086", 1, 0.0, 0.001, "::1"),
        ("GET", "/query", b"q=CREATE+USER+a+WITH+PASSWORD+%27s3cret%27", 200, "ok", None, 1, 0.0, 0.1, "x"),
        ("GET", "/a b", b"a b", 503, "no_backend", None, 0, 5.0, 5.0, "client with space"),
        ("GET", "/query", b"db=x", 200, "ok", None, 1, 0.0, 0.1, "Authorization: Bearer abc"),
    ],
)
async def test_every_batched_text_line_matches_the_text_formatter(args: tuple[Any, ...]) -> None:
    out = io.StringIO()
    access = AccessLog("text", stream=out, logger=_logger(), flush_secs=3600)
    access.start()
    access.request(*args)
    access.close()
    line = out.getvalue()
    fields = dict(zip(FIELDS, (args[0], args[1], redact_query(args[2].decode()), *args[3:7]), strict=False))
    fields.update(held_ms=round(args[7] * 1000, 1), duration_ms=round(args[8] * 1000, 2), client=args[9])
    record = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 1, "request", None, None)
    record.fields = fields  # type: ignore[attr-defined]
    expected = TextFormatter().format(record) + "\n"
    assert line.split(" ", 1)[1] == expected.split(" ", 1)[1]
    assert "unter2" not in line and "s3cret" not in line and " abc" not in line


async def test_request_batches_are_handed_over_at_batch_lines() -> None:
    out = _WatchedStream()
    access = AccessLog("text", stream=out, logger=_logger(), flush_secs=3600)
    access.start()
    try:
        for _ in range(BATCH_LINES - 1):
            access.request(*REQUEST_ARGS)
        await asyncio.sleep(0.05)
        assert not out.written.is_set()  # still fields, waiting for the batch or the timer
        access.request(*REQUEST_ARGS)
        assert await asyncio.to_thread(out.written.wait, 10)
    finally:
        access.close()
    assert len(out.getvalue().splitlines()) == BATCH_LINES


async def test_lines_are_batched_and_written_on_close() -> None:
    out = io.StringIO()
    access = AccessLog("text", stream=out, logger=_logger(), flush_secs=3600)
    access.start()
    for n in range(5):
        access.record({**FIELDS, "attempts": n})
    assert out.getvalue() == ""  # waiting for the batch
    access.close()
    lines = out.getvalue().splitlines()
    assert [line.split("attempts=")[1].split()[0] for line in lines] == ["0", "1", "2", "3", "4"]


class _WatchedStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.written = threading.Event()

    def write(self, text: str) -> int:
        count = super().write(text)
        self.written.set()
        return count


async def test_a_batch_is_written_soon_without_close() -> None:
    out = _WatchedStream()
    access = AccessLog("json", stream=out, logger=_logger(), flush_secs=0.01)
    access.start()
    try:
        access.record(dict(FIELDS))
        assert await asyncio.to_thread(out.written.wait, 10)
        assert json.loads(out.getvalue())["status"] == 200
    finally:
        access.close()


class _BlockedStream(io.StringIO):
    """A pipe nobody reads: writes wait until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.release.wait(30)
        return super().write(text)


async def test_a_blocked_output_drops_and_counts_lines_instead_of_waiting() -> None:
    out = _BlockedStream()
    metrics = Metrics()
    access = AccessLog(
        "text", stream=out, logger=_logger(), queue_lines=10, on_drop=metrics.access_log_dropped.inc
    )
    access.start()
    try:
        access.record(dict(FIELDS))
        access._flush()  # the first batch is now stuck in write()
        assert out.writing.wait(10)
        started = time.monotonic()
        for _ in range(100):
            access.record(dict(FIELDS))
        access._flush()
        assert time.monotonic() - started < 5  # never waited for the blocked write (30 s)
        assert access.dropped == 91  # 10 fit: the stuck one and 9 more
        assert metrics.registry.get_sample_value("hyperbytedb_proxy_access_log_dropped_total") == 91
    finally:
        out.release.set()
        access.close()
    assert len(out.getvalue().splitlines()) == 10


async def test_the_operator_handler_stream_is_used_directly() -> None:
    out = io.StringIO()
    logger = _logger()
    logger.addHandler(OperatorHandler(out, "json"))
    access = AccessLog("text", logger=logger, flush_secs=3600)
    access.start()
    access.record(dict(FIELDS))
    assert out.getvalue() == ""  # batched, not written by the handler
    access.close()
    assert json.loads(out.getvalue())["outcome"] == "ok"  # the handler's format wins
    access.record(dict(FIELDS))  # after close: through logging, at once
    assert len(out.getvalue().splitlines()) == 2


async def test_other_logging_setups_receive_records() -> None:
    logger = _logger()
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    access = AccessLog("text", logger=logger)
    access.start()
    access.record(dict(FIELDS))
    access.close()
    assert [record.fields for record in seen] == [FIELDS]  # type: ignore[attr-defined]


async def test_below_info_nothing_is_written() -> None:
    out = io.StringIO()
    access = AccessLog("text", stream=out, logger=_logger(logging.WARNING))
    h = Harness(ips=["127.0.0.2"], access_log=access)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        assert (await h.client.get("/query?q=x")).status_code == 204
        assert not access.enabled
    assert out.getvalue() == ""


async def test_proxied_requests_reach_an_injected_access_log() -> None:
    out = io.StringIO()
    access = AccessLog("text", stream=out, logger=_logger())
    h = Harness(ips=["127.0.0.2"], access_log=access)
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        await h.client.post(
            "/write?db=x&p=hunter2", content=b"m v=1 1", headers={"Authorization": "Basic c2VjcmV0"}
        )
    (line,) = out.getvalue().splitlines()  # written by the lifespan's shutdown at the latest
    assert " INFO hyperbytedb_proxy.access request method=POST path=/write " in line
    assert "status=204 outcome=ok backend=127.0.0.2:8086 attempts=1 " in line
    assert "hunter2" not in line and "c2VjcmV0" not in line
