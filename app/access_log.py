"""The access log: one line per proxied request, written off the event loop.

Going through ``logging`` costs a LogRecord, a formatter pass and a write
system call per request -- about a quarter of a proxied request's CPU.  This
writer formats the same line directly (text or JSON, byte for byte what the
logging formatters produce, redaction included) and hands the lines, batched,
to a writer thread, which does the one write.

A request only leaves its fields behind (one tuple); the lines are formatted
together, ``FORMAT_LINES`` at a time, and handed over every tenth of a second
or every ``BATCH_LINES`` lines.  Measured under load, formatting each line as its
request ends cost about three times as much CPU as formatting them in a
batch: the formatting code and data stay in the CPU cache for the batch
instead of being evicted by the request path between two lines.  Batches are
large on purpose: each hand-over wakes the writer, which then takes the GIL
from the event loop for a moment.  Formatting goes in smaller steps, so one
stalls the loop for about a tenth of a millisecond.  The event loop never waits
for the output: when the writer is behind (a slow or blocked stdout pipe)
and its bounded queue is full, new lines are dropped and counted instead of
stalling requests.

While logging is not configured by :func:`app.logs.setup_logging` (an
embedding application, or tests capturing records), lines go through the
``hyperbytedb_proxy.access`` logger as before, so they reach whatever
handlers are installed.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from app.logs import OperatorHandler, hints_secret, redact, redact_query

LOGGER_NAME = "hyperbytedb_proxy.access"
MESSAGE = "request"
FLUSH_SECS = 0.1  # how long a line may wait for others to share its write (Envoy waits 1 s)
BATCH_LINES = 1024  # a batch this long is handed over at once
FORMAT_LINES = 64  # requests formatted together (~0.15 ms of the event loop)
QUEUE_LINES = 16_384  # lines waiting for the writer; beyond it lines are dropped (~4 MiB)
CLOSE_TIMEOUT_SECS = 5.0  # a blocked output must not hold the shutdown forever

_Lock = contextlib.AbstractContextManager[Any]  # a threading.Lock or RLock

_TEXT_PREFIX = f" INFO {LOGGER_NAME} {MESSAGE} "
_JSON_HEAD = {"level": "info", "logger": LOGGER_NAME, "msg": MESSAGE}


class AccessLog:
    """Formats access lines and passes them, batched, to a writer thread.

    Built by ``create_app``; :meth:`start` (lifespan startup, inside the
    event loop) decides once whether lines are written at all and how, and
    :meth:`close` (lifespan shutdown) writes what is left.
    """

    def __init__(
        self,
        log_format: str,
        *,
        on_drop: Callable[[int], None] = lambda count: None,
        stream: TextIO | None = None,
        logger: logging.Logger | None = None,
        queue_lines: int = QUEUE_LINES,
        flush_secs: float = FLUSH_SECS,
    ) -> None:
        self._json = log_format == "json"
        self._on_drop = on_drop
        self._stream = stream  # None: the operator handler's stream, found at start
        self._queue_lines = queue_lines
        self._flush_secs = flush_secs
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._writer: _LineWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lines: list[str] = []
        self._entries: list[_Entry] = []  # requests whose lines are still to be formatted
        self._flush_timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""
        # Until start(), and after close(), lines go through logging.
        self.enabled = True

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Check the level once and, when logging is ours, start the writer thread."""
        self.enabled = self._logger.isEnabledFor(logging.INFO)
        if not self.enabled or self._writer is not None:
            return
        lock: _Lock
        if self._stream is not None:
            stream, lock = self._stream, threading.Lock()
        else:
            handler = _only_handler(self._logger)
            if not isinstance(handler, OperatorHandler):
                return  # someone else's logging setup: keep using it
            stream, lock = handler.stream, handler.lock
            self._json = handler.log_format == "json"
        self._loop = asyncio.get_running_loop()
        self._writer = _LineWriter(stream, lock, self._queue_lines, self._on_drop)
        self._writer.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Write every pending line; later lines go through logging, synchronously."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        atexit.unregister(self.close)
        # Not cancelled: at exit the loop may be closed already; firing later, it finds nothing to do.
        self._flush_timer = None
        self._hand_over(writer)
        writer.close(CLOSE_TIMEOUT_SECS)

    @property
    def dropped(self) -> int:
        """Lines dropped since start because the writer was behind."""
        return self._writer.dropped if self._writer is not None else 0

    # -- the hot path ----------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        query: bytes,
        status: int,
        outcome: str,
        backend: str | None,
        attempts: int,
        held_secs: float,
        duration_secs: float,
        client: str | None,
    ) -> None:
        """Log one proxied request (the access line's fields, in its order); formatted later, in a batch."""
        entry = (
            time.time(),
            method,
            path,
            query,
            status,
            outcome,
            backend,
            attempts,
            held_secs,
            duration_secs,
            client,
        )
        if self._writer is None:
            self._logger.info(MESSAGE, extra={"fields": _fields(entry)})
            return
        entries = self._entries
        entries.append(entry)
        if len(entries) >= FORMAT_LINES:
            self._entries = []
            lines = self._lines
            lines += self._format(entries)
            if len(lines) >= BATCH_LINES:
                self._flush()
                return
        self._flush_soon()

    def record(self, fields: dict[str, Any]) -> None:
        """Log one request from its fields, which keep their order in the line."""
        if self._writer is None:
            self._logger.info(MESSAGE, extra={"fields": fields})
            return
        self._lines.append(self.line(time.time(), fields))
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_timer is None:
            assert self._loop is not None
            self._flush_timer = self._loop.call_later(self._flush_secs, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._writer is not None:
            self._hand_over(self._writer)

    def _hand_over(self, writer: _LineWriter) -> None:
        if self._entries:
            entries, self._entries = self._entries, []
            self._lines += self._format(entries)
        if self._lines:
            lines, self._lines = self._lines, []
            writer.submit(lines)

    def _format(self, entries: list[_Entry]) -> list[str]:
        if self._json:
            return [self._json_line(entry[0], _fields(entry)) for entry in entries]
        lines: list[str] = []
        append = lines.append
        last_second = last_ms = -1
        stamp = ""
        for now, method, path, query, status, outcome, backend, attempts, held, took, client in entries:
            second = int(now)
            ms = int((now - second) * 1000)
            if ms != last_ms or second != last_second:  # many requests end in the same millisecond
                last_second, last_ms = second, ms
                stamp = self.timestamp(now)
            text = query.decode("latin-1")
            line = (
                f"{stamp}{_TEXT_PREFIX}method={method} "
                f"path={path if ' ' not in path else _text_value(path)} "
                f"query={text if text and ' ' not in text else _text_value(text)} status={status} "
                f"outcome={outcome} backend={_text_value(backend)} attempts={attempts} "
                f"held_ms={round(held * 1000, 1) if held else 0.0} duration_ms={round(took * 1000, 2)} "
                f"client={_text_value(client)}\n"
            )
            # Only the path, the query and the client can carry a credential:
            # the patterns run when one of them hints at one.
            if hints_secret(f"{path}{text}{client}".lower()):
                line = redact(line)
            append(line)
        return lines

    # -- formatting (identical to app.logs' formatters) -----------------

    def line(self, now: float, fields: dict[str, Any]) -> str:
        """The line the logging formatter would write for these fields at ``now``, newline included."""
        return self._json_line(now, fields) if self._json else self._text_line(now, fields)

    def timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"

    def _text_line(self, now: float, fields: dict[str, Any]) -> str:
        values = " ".join([f"{key}={_text_value(value)}" for key, value in fields.items()])
        return redact(f"{self.timestamp(now)}{_TEXT_PREFIX}{values}") + "\n"

    def _json_line(self, now: float, fields: dict[str, Any]) -> str:
        entry = {"ts": self.timestamp(now), **_JSON_HEAD, **fields}
        return redact(json.dumps(entry, default=str, separators=(",", ":"))) + "\n"


# What request() keeps of a request until its line is formatted: when it ended
# (wall clock), then the fields in the line's order, the times in seconds.
_Entry = tuple[float, str, str, bytes, int, str, str | None, int, float, float, str | None]


def _query(query: bytes) -> str:
    return query.decode("latin-1")


def _fields(entry: _Entry) -> dict[str, Any]:
    """An entry's fields as the logging formatters take them (times in ms, query redacted)."""
    _, method, path, query, status, outcome, backend, attempts, held, duration, client = entry
    return {
        "method": method,
        "path": path,
        "query": redact_query(_query(query)),
        "status": status,
        "outcome": outcome,
        "backend": backend,
        "attempts": attempts,
        "held_ms": round(held * 1000, 1),
        "duration_ms": round(duration * 1000, 2),
        "client": client,
    }


def _text_value(value: Any) -> str:
    if value.__class__ is not str:
        return str(value)
    return json.dumps(value) if (" " in value or not value) else value


def _only_handler(logger: logging.Logger) -> logging.Handler | None:
    """The one handler a record of ``logger`` would reach, when there is exactly one and no filter."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        found.extend(current.handlers)
        current = current.parent if current.propagate else None
    return found[0] if len(found) == 1 else None


class _LineWriter:
    """A daemon thread writing batches of lines; the event loop only ever appends to its queue."""

    def __init__(self, stream: TextIO, lock: _Lock, capacity: int, on_drop: Callable[[int], None]) -> None:
        self._stream = stream
        self._stream_lock = lock  # shared with the log handler, so lines never interleave
        self._capacity = capacity
        self._on_drop = on_drop
        self._batches: collections.deque[list[str]] = collections.deque()
        self._queued = 0  # lines queued or being written
        self._closing = False
        self._wakeup = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._run, name="access-log-writer", daemon=True)
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, lines: list[str]) -> None:
        """Queue what fits, drop (and count) the rest; never waits for the output."""
        with self._wakeup:
            room = self._capacity - self._queued
            if room <= 0 or self._closing:
                kept: list[str] = []
            else:
                kept = lines if len(lines) <= room else lines[:room]
                self._queued += len(kept)
                self._batches.append(kept)
                self._wakeup.notify()
            lost = len(lines) - len(kept)
            self.dropped += lost
        if lost:
            self._on_drop(lost)

    def close(self, timeout: float) -> None:
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._batches and not self._closing:
                    self._wakeup.wait()
                if not self._batches:
                    return
                batches = list(self._batches)
                self._batches.clear()
            count = sum(len(batch) for batch in batches)
            text = "".join(["".join(batch) for batch in batches])
            lost = 0
            try:
                with self._stream_lock:
                    self._stream.write(text)
                    self._stream.flush()
            except (OSError, ValueError):  # output closed or broken: nothing to write to
                lost = count
                self._on_drop(count)
            with self._wakeup:
                self._queued -= count
                self.dropped += lost
