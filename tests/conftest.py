"""Shared pytest configuration: async tests run on asyncio, and markers follow the directory layout.

``make unit`` deselects every marker below, so a test that starts a process,
a browser, or the chart renderer must sit where this table marks it (or carry
the marker itself).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# Path under tests/ (a directory or one file) -> the markers its tests get.
MARKERS_BY_PATH: dict[str, tuple[str, ...]] = {
    "integration": ("integration",),
    "hostile": ("integration",),
    "browser": ("integration", "browser"),
    "chaos": ("integration",),
    "chaos/test_chaos_short.py": ("slow",),
    "bench/test_bench_smoke.py": ("integration", "slow"),
    "deploy/test_chart.py": ("deploy",),
    "deploy/test_containerfile.py": ("deploy",),
    "sim/test_sim_processes.py": ("integration",),
    "sim/test_sim_replication.py": ("integration",),
    "sim/test_sim_cluster_demo.py": ("integration",),
}


def markers_for(path: Path) -> set[str]:
    """Every marker the table gives ``path`` through itself or a directory above it."""
    relative = path.resolve().relative_to(TESTS)
    prefixes = [relative, *relative.parents]
    return {marker for prefix in prefixes for marker in MARKERS_BY_PATH.get(prefix.as_posix(), ())}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs before ``-m`` deselects, so the directory markers count there."""
    for item in items:
        for marker in sorted(markers_for(item.path)):
            item.add_marker(marker)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
