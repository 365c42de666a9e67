"""One large chunked response read by curl, which discards the bytes."""

from __future__ import annotations

from dataclasses import dataclass

from bench.tools import run_bounded

STREAM_CHUNK = 65536


@dataclass
class StreamResult:
    bytes: int
    seconds: float
    status: int

    @property
    def mb_per_s(self) -> float:
        """Decimal megabytes (10^6 bytes) per second."""
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


class StreamError(RuntimeError):
    pass


def stream_path(total: int) -> str:
    return f"/_sim/stream?bytes={total}&chunk={STREAM_CHUNK}"


def fetch(curl: str, url: str, *, expect_bytes: int, timeout: float) -> StreamResult:
    """GET ``url`` once; raises StreamError unless exactly ``expect_bytes`` arrived with a 200."""
    argv = [
        curl,
        "--silent",
        "--show-error",
        "--http1.1",
        "--noproxy",
        "*",
        "--output",
        "/dev/null",
        "--max-time",
        f"{timeout:g}",
        "--write-out",
        "%{size_download} %{time_total} %{http_code}",
        url,
    ]
    completed = run_bounded(argv, timeout=timeout + 10)
    try:
        size, seconds, status = completed.stdout.split()
        result = StreamResult(int(size), float(seconds), int(status))
    except ValueError:
        raise StreamError(f"curl said {completed.stdout!r} {completed.stderr.strip()!r}") from None
    if completed.returncode != 0 or result.status != 200 or result.bytes != expect_bytes:
        raise StreamError(
            f"stream from {url} got {result.bytes} of {expect_bytes} bytes, status {result.status}, "
            f"curl exit {completed.returncode}: {completed.stderr.strip()}"
        )
    return result
