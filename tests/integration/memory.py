"""Watching a process's resident memory while a test drives it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass


def rss_mib(pid: int | None) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class PeakRSS:
    before: float
    peak: float

    @property
    def growth(self) -> float:
        return self.peak - self.before


@contextlib.contextmanager
def peak_rss(pid: int | None, interval: float = 0.02) -> Iterator[PeakRSS]:
    """Sample the RSS of ``pid`` every ``interval`` seconds until the block ends."""
    result = PeakRSS(rss_mib(pid), rss_mib(pid))
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            result.peak = max(result.peak, rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join(timeout=2)
