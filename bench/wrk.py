"""Running wrk and reading its report."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.tools import run_bounded

WRITE_BODY_BYTES = 64 * 1024
# wrk's -t1: one thread drives every connection, leaving the other core to the target.
WRK_TIMEOUT = "2s"  # wrk's default, written out: a response slower than this counts as an error

_LINE = "cpu,host=server01,region=us-west value=0.64,busy=12i 1434055562000000000\\n"
WRITE_SCRIPT = f"""-- POST a {WRITE_BODY_BYTES}-byte line-protocol body on every request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain"
local line = "{_LINE}"
wrk.body = string.sub(string.rep(line, math.ceil({WRITE_BODY_BYTES} / #line)), 1, {WRITE_BODY_BYTES})
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


class WrkError(RuntimeError):
    pass


def parse(text: str) -> WrkResult:
    """Read wrk's --latency report; percentiles are converted to milliseconds."""
    result = WrkResult()
    total = _TOTAL.search(text)
    rps = _RPS.search(text)
    if total is None or rps is None:
        raise WrkError(f"unexpected wrk output:\n{text.strip()[-1000:]}")
    result.requests = int(total.group(1))
    result.seconds = float(total.group(2)) * _UNITS[total.group(3)] / 1000
    result.rps = float(rps.group(1))
    for match in _PERCENTILE.finditer(text):
        setattr(result, f"p{match.group(1)}_ms", float(match.group(2)) * _UNITS[match.group(3)])
    if socket := _SOCKET.search(text):
        names = ("connect", "read", "write", "timeout")
        result.socket_errors = dict(zip(names, map(int, socket.groups()), strict=True))
    if non2xx := _NON2XX.search(text):
        result.non_2xx_3xx = int(non2xx.group(1))
    return result


def write_script(directory: Path) -> Path:
    path = directory / "write.lua"
    path.write_text(WRITE_SCRIPT)
    return path


def run(
    binary: str, url: str, *, connections: int, duration: int, script: Path | None = None
) -> tuple[WrkResult, str]:
    """One wrk run (-t1); returns the parsed result and wrk's own text."""
    argv = [binary, "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={WRK_TIMEOUT}", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    completed = run_bounded(argv, timeout=duration + 30)
    if completed.returncode != 0:
        raise WrkError(f"wrk exited {completed.returncode}: {completed.stderr.strip()[-500:]}")
    return parse(completed.stdout), completed.stdout
