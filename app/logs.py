"""Logging for operators: one line per event, text or JSON, never a credential.

Structured fields travel in ``extra={"fields": {...}}`` so both formats can
render them; every line passes through :func:`redact` before it is written,
whichever library logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

REDACTED = "[REDACTED]"

_SECRET_PATTERNS = (
    # InfluxDB v1 password query parameter: ?p=secret or &p=secret
    (re.compile(r"(?i)(^|[?&=\s\"'])(p=)[^&\s\"']*"), rf"\1\2{REDACTED}"),
    # Authorization header values, in header dumps or reprs
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=,]\s*[\"']?)(?:(basic|bearer|token)\s+)?[^\s\"',)]+"),
        lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}",
    ),
    # InfluxQL "WITH PASSWORD '...'" / "SET PASSWORD FOR u = '...'", plain or URL-encoded
    (
        re.compile(r"(?i)(password(?:%20|\+|\s)+(?:for(?:%20|\+|\s)+\S+?(?:%20|\+|\s)*=(?:%20|\+|\s)*)?)"
                   r"(%27.*?%27|'[^']*'|\"[^\"]*\"|%22.*?%22)"),
        rf"\1{REDACTED}",
    ),
)  # fmt: skip


def hints_secret(lowered: str) -> bool:
    """Whether lower-cased text may hold a credential; the patterns only run when it does."""
    return "p=" in lowered or "authorization" in lowered or "password" in lowered


def redact(text: str) -> str:
    """Remove passwords and credentials from a log line."""
    if not hints_secret(text.lower()):
        return text  # the common case, without running the patterns
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_query(query: str) -> str:
    """A query string safe to log."""
    return redact(query) if query else query


class _Formatter(logging.Formatter):
    def fields(self, record: logging.LogRecord) -> Mapping[str, Any]:
        return getattr(record, "fields", None) or {}

    def timestamp(self, record: logging.LogRecord) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [self.timestamp(record), record.levelname, record.name, record.getMessage()]
        parts.extend(f"{key}={_text_value(value)}" for key, value in self.fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(self.fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, separators=(",", ":")))


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class _DropUvicornTraceback(logging.Filter):
    """uvicorn logs every exception an app raises; a relay we aborted on purpose is already logged."""

    def __init__(self, expected: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self._expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self._expected))


class OperatorHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`setup_logging` installs; the access log writes to its stream directly."""

    lock: threading.RLock  # Handler.__init__ always creates it; the access log shares it

    def __init__(self, stream: TextIO, log_format: str) -> None:
        super().__init__(stream)
        self.log_format = log_format
        self.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())


def setup_logging(
    log_format: str, level: str, *, quiet_exceptions: tuple[type[BaseException], ...] = ()
) -> None:
    """Route every logger (uvicorn's included) through one redacting handler on stderr."""
    handler = OperatorHandler(sys.stderr, log_format)
    if quiet_exceptions:
        handler.addFilter(_DropUvicornTraceback(quiet_exceptions))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the proxy writes its own access line
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
