"""The lock files say exactly what pyproject.toml asks for (``make lock`` rewrites them)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT = "hyperbytedb-proxy"
FROM_PYPROJECT = f"{PROJECT} (pyproject.toml)"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)")


@dataclass
class Pin:
    version: Version
    hashes: int = 0
    via: tuple[str, ...] = ()


def read_lock(path: Path) -> dict[str, Pin]:
    """``name==version`` entries with their hash count and ``# via`` lines."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    via: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if match := PIN.match(raw):
            current = Pin(Version(match["version"]))
            pins[canonicalize_name(match["name"])] = current
            via = []
        elif current is not None and line.startswith("--hash=sha256:"):
            current.hashes += 1
        elif current is not None and line.startswith("# via"):
            via = [line.removeprefix("# via").strip()]
            current.via = tuple(filter(None, via))
        elif current is not None and line.startswith("#   "):
            via.append(line.removeprefix("#").strip())
            current.via = tuple(filter(None, via))
    return pins


def asked_for(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject's dependencies plus the given extras, self-references expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    wanted = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == PROJECT:
                pending.extend(requirement.extras)
            else:
                wanted.append(requirement)
    return wanted


LOCKS = {"requirements.lock": ("gunicorn",), "requirements-dev.lock": ("dev",)}


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_every_dependency_is_pinned_within_its_specifier(lock: str, extras: tuple[str, ...]) -> None:
    pins = read_lock(REPO / lock)
    for requirement in asked_for(extras):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is not in {lock}: run make lock"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{lock} pins {requirement.name}=={pin.version}, outside {requirement}: run make lock"
        )


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_lock_asks_for_nothing_pyproject_does_not(lock: str, extras: tuple[str, ...]) -> None:
    pins = read_lock(REPO / lock)
    direct = {canonicalize_name(r.name) for r in asked_for(extras)}
    top_level = {name for name, pin in pins.items() if FROM_PYPROJECT in pin.via}
    assert top_level == direct, f"{lock} is stale: run make lock"
    assert PROJECT not in pins  # the project itself is installed with --no-deps


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_has_hashes(lock: str) -> None:
    pins = read_lock(REPO / lock)
    assert pins
    assert all(pin.hashes for pin in pins.values()), [name for name, pin in pins.items() if not pin.hashes]


def test_runtime_and_dev_locks_agree() -> None:
    runtime, dev = read_lock(REPO / "requirements.lock"), read_lock(REPO / "requirements-dev.lock")
    assert set(runtime) <= set(dev)
    assert all(runtime[name].version == dev[name].version for name in runtime)
