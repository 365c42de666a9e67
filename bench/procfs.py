"""CPU time and memory of running processes, read from /proc (Linux only)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Self

CLK_TCK = os.sysconf("SC_CLK_TCK")
RSS_SAMPLE_SECS = 0.02


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (gunicorn's master and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [pid], [pid]
    for _ in range(10_000):  # bounded walk of the process tree
        if not todo:
            break
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def cpu_ticks(pids: Iterable[int]) -> int:
    """utime + stime of ``pids``, in clock ticks (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total


def tree_cpu_ticks(pid: int) -> int:
    """CPU ticks of ``pid`` and its live descendants."""
    return cpu_ticks(descendants(pid))


def ticks_to_secs(ticks: int) -> float:
    return ticks / CLK_TCK


def rss_bytes(pid: int) -> int | None:
    """VmRSS of ``pid``, or None when it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", "rb") as handle:
        for line in handle:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


class RssSampler:
    """Samples VmRSS of one process every 20 ms in a thread; ``peak`` is the largest value seen."""

    def __init__(self, pid: int, *, max_secs: float = 600.0) -> None:
        self.pid = pid
        self.baseline = rss_bytes(pid) or 0
        self.peak = self.baseline
        self.samples = 0
        self._max_samples = int(max_secs / RSS_SAMPLE_SECS) + 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.baseline)

    def _run(self) -> None:
        for _ in range(self._max_samples):
            value = rss_bytes(self.pid)
            if value is None:
                return
            self.peak = max(self.peak, value)
            self.samples += 1
            if self._stop.wait(RSS_SAMPLE_SECS):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
