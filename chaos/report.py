"""Scenario results: the numbers of the table and the checks that make a scenario pass."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from chaos.harness import Access
from chaos.load import Sample, acked_points, failures, percentile


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class ScenarioResult:
    name: str
    title: str
    load_secs: float = 0.0
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    writes_acked: int = 0
    points_acked: int = 0
    points_found: int = 0  # acknowledged points found on the nodes afterwards
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    hold_ms: float = 0.0  # longest held_ms of the proxy's access log
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None  # the scenario itself broke (harness error, timeout)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.error is None and all(c.ok for c in self.checks)

    @property
    def verdict(self) -> str:
        if self.skipped is not None:
            return "SKIP"
        return "PASS" if self.ok else "FAIL"

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def fill(self, samples: Sequence[Sample], found: set[int] | None, access: Iterable[Access] = ()) -> None:
        """The table's numbers from the clients' samples, the stored points and the access log."""
        self.requests = len(samples)
        self.failures = failures(samples)
        self.writes_acked = sum(1 for s in samples if s.kind == "write" and s.ok)
        acked = acked_points(samples)
        self.points_acked = len(acked)
        if found is not None:
            self.points_found = len(acked & found)
        latencies = [s.latency * 1000 for s in samples]
        self.p50_ms = percentile(latencies, 0.50)
        self.p99_ms = percentile(latencies, 0.99)
        self.max_ms = max(latencies, default=0.0)
        self.hold_ms = max((a.held_ms for a in access), default=0.0)
        if samples:
            self.load_secs = max(s.end for s in samples) - min(s.start for s in samples)

    def summary(self) -> str:
        """Checks and notes, one per line, for the log and for assertion messages."""
        lines = [f"[{self.verdict}] {self.name}: {self.title}"]
        if self.skipped:
            lines.append(f"  skipped: {self.skipped}")
        if self.error:
            lines.append(f"  error: {self.error}")
        for check in self.checks:
            detail = f": {check.detail}" if check.detail else ""
            lines.append(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}{detail}")
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.workdir:
            lines.append(f"  logs: {self.workdir}")
        return "\n".join(lines)


COLUMNS = (
    ("scenario", "<"),
    ("load s", ">"),
    ("requests", ">"),
    ("failures", "<"),
    ("writes ok", ">"),
    ("pts acked", ">"),
    ("pts found", ">"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("max ms", ">"),
    ("hold ms", ">"),
    ("result", "<"),
)


def _failures_text(counter: Counter[str]) -> str:
    if not counter:
        return "0"
    return " ".join(f"{key}:{count}" for key, count in sorted(counter.items()))


def row(result: ScenarioResult) -> list[str]:
    if result.skipped is not None:
        return [result.name, *["-"] * (len(COLUMNS) - 2), "SKIP"]
    return [
        result.name,
        f"{result.load_secs:.0f}",
        str(result.requests),
        _failures_text(result.failures),
        str(result.writes_acked),
        str(result.points_acked),
        str(result.points_found),
        f"{result.p50_ms:.1f}",
        f"{result.p99_ms:.1f}",
        f"{result.max_ms:.0f}",
        f"{result.hold_ms:.0f}",
        result.verdict,
    ]


def table(results: Sequence[ScenarioResult]) -> str:
    rows = [[name for name, _ in COLUMNS], *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for index, cells in enumerate(rows):
        lines.append(
            " | ".join(
                f"{cell:{align}{width}}"
                for cell, (_, align), width in zip(cells, COLUMNS, widths, strict=True)
            )
        )
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths))
    return "\n".join(lines)
