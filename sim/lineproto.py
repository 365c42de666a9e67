"""InfluxDB line protocol, parsed just well enough for the simulated node.

The simulator must reject what HyperbyteDB rejects (so the proxy's 400
relaying can be tested) and must key points the way the database does
(series + timestamp, so duplicate deliveries by retries collapse into one point
and a test can count distinct points).  It keeps field values as raw text: the
node never computes over them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

PRECISION_NS: Mapping[str, int] = MappingProxyType(
    {
        "": 1,
        "n": 1,
        "ns": 1,
        "u": 1_000,
        "us": 1_000,
        "µ": 1_000,
        "ms": 1_000_000,
        "s": 1_000_000_000,
        "m": 60_000_000_000,
        "h": 3_600_000_000_000,
    }
)

_INT_RE = re.compile(r"[-+]?\d+i")
_UINT_RE = re.compile(r"\d+u")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_TIMESTAMP_RE = re.compile(r"-?\d+")
_BOOLS = frozenset({"t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"})


class LineProtocolError(ValueError):
    """A line the database would refuse with 400."""


@dataclass(frozen=True, slots=True)
class Point:
    """One accepted point: identity (``key``) plus the text needed to store it."""

    measurement: str  # unescaped, as queries name it
    series: str  # measurement and tags as received (escapes kept)
    fields: str  # the field set as received
    timestamp_ns: int
    key: str  # measurement + sorted tags + timestamp: the database's identity of a point

    def line(self) -> str:
        """The point as a line with an explicit nanosecond timestamp (re-parseable with precision n)."""
        return f"{self.series} {self.fields} {self.timestamp_ns}"


def precision_multiplier(precision: str) -> int:
    """Nanoseconds per unit of ``precision``; raises for an unknown unit, as the database does."""
    try:
        return PRECISION_NS[precision]
    except KeyError:
        raise LineProtocolError(f"invalid precision {precision!r}") from None


def parse_lines(text: str, *, precision: str = "n", now_ns: int) -> list[Point]:
    """Parse a write body; blank and ``#`` lines are skipped, any bad line fails the whole batch."""
    multiplier = precision_multiplier(precision)
    points: list[Point] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r").strip(" \t")
        if not line or line.startswith("#"):
            continue
        try:
            points.append(_parse_line(line, multiplier, now_ns))
        except LineProtocolError as exc:
            raise LineProtocolError(f"unable to parse '{_clip(line)}' (line {number}): {exc}") from None
    return points


def unescape(text: str) -> str:
    """Drop the backslash of ``\\,`` ``\\ `` ``\\=`` escapes in a measurement or tag."""
    if "\\" not in text:
        return text
    return text.replace("\\,", ",").replace("\\ ", " ").replace("\\=", "=").replace("\\\\", "\\")


def _clip(line: str, limit: int = 120) -> str:
    return line if len(line) <= limit else line[:limit] + "..."


def _parse_line(line: str, multiplier: int, now_ns: int) -> Point:
    if "\\" not in line and '"' not in line:
        sections = [part for part in line.split(" ") if part]
    else:
        sections = _sections(line)
    if len(sections) < 2:
        raise LineProtocolError("missing fields")
    if len(sections) > 3:
        raise LineProtocolError("unexpected text after the timestamp")
    series, fields = sections[0], sections[1]
    parts = _split(series, ",", quotes=False)
    measurement = parts[0]
    if not measurement:
        raise LineProtocolError("missing measurement")
    tags = parts[1:]
    for tag in tags:
        key, value = _split_kv(tag)
        if not key or not value:
            raise LineProtocolError(f"invalid tag {tag!r}")
    for field in _split(fields, ",", quotes=True):
        key, value = _split_kv(field)
        if not key:
            raise LineProtocolError(f"missing field key in {field!r}")
        _check_field_value(value)
    if len(sections) == 3:
        if not _TIMESTAMP_RE.fullmatch(sections[2]):
            raise LineProtocolError(f"invalid timestamp {sections[2]!r}")
        timestamp_ns = int(sections[2]) * multiplier
    else:
        timestamp_ns = now_ns
    key = ",".join([measurement, *sorted(tags)]) + f" {timestamp_ns}"
    return Point(unescape(measurement), series, fields, timestamp_ns, key)


def _check_field_value(value: str) -> None:
    if not value:
        raise LineProtocolError("missing field value")
    if value[0] == '"':
        if len(value) < 2 or value[-1] != '"':
            raise LineProtocolError("unterminated string field")
        return
    if value in _BOOLS or _INT_RE.fullmatch(value) or _UINT_RE.fullmatch(value):
        return
    if not _FLOAT_RE.fullmatch(value):
        raise LineProtocolError(f"invalid field value {value!r}")


def _sections(line: str) -> list[str]:
    """Split at spaces that are not escaped and not inside a quoted field value."""
    sections: list[str] = []
    start = 0
    index = 0
    in_quote = False
    length = len(line)
    while index < length:
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char == '"' and len(sections) == 1:
            in_quote = not in_quote
        elif char == " " and not in_quote:
            sections.append(line[start:index])
            while index < length and line[index] == " ":
                index += 1
            start = index
            continue
        index += 1
    if in_quote:
        raise LineProtocolError("unterminated string field")
    if start < length:
        sections.append(line[start:])
    return sections


def _split(text: str, sep: str, *, quotes: bool) -> list[str]:
    """Split at ``sep`` unless escaped (or, with ``quotes``, inside a quoted string)."""
    if "\\" not in text and (not quotes or '"' not in text):
        return text.split(sep)
    parts: list[str] = []
    start = 0
    index = 0
    in_quote = False
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if quotes and char == '"':
            in_quote = not in_quote
        elif char == sep and not in_quote:
            parts.append(text[start:index])
            start = index + 1
        index += 1
    parts.append(text[start:])
    return parts


def _split_kv(text: str) -> tuple[str, str]:
    """Split ``key=value`` at the first unescaped ``=``; a missing ``=`` is an error."""
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "=":
            return text[:index], text[index + 1 :]
        index += 1
    raise LineProtocolError(f"missing '=' in {text!r}")
