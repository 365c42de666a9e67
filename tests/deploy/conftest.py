"""Fixtures for the deployment tests: the chart renderer and rendered manifests.

The renderer is ``shared/tools/helm-template`` (an offline ``helm template``),
built once per test session from ``<repo>/../shared``. It is a hard
requirement: when it cannot be built the tests fail, they never skip.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "hyperbytedb-proxy"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
# shared/ sits beside the checkout (or beside the directory holding worktrees).
BUILD_SCRIPT = next(
    (
        candidate
        for candidate in (
            base / "shared" / "tools" / "helm-template" / "build.sh" for base in REPO.parents[:2]
        )
        if candidate.is_file()
    ),
    REPO.parent / "shared" / "tools" / "helm-template" / "build.sh",
)

# The only value a user must give.
BACKEND = "db-headless.db.svc.cluster.local"
# What the Downward API would put into status.podIP, for resolving env.
POD_IP = "10.244.1.17"


@dataclass(frozen=True)
class SecretRef:
    """An env entry that reads a Secret's key (valueFrom.secretKeyRef)."""

    name: str
    key: str


@dataclass
class Rendered:
    """The manifests of one render, parsed."""

    text: str
    notes: str = ""
    docs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.docs = [doc for doc in yaml.safe_load_all(self.text) if doc]

    def kinds(self) -> list[str]:
        return [doc["kind"] for doc in self.docs]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}: {self.kinds()}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert [c["name"] for c in containers] == ["proxy"]
        return containers[0]

    @property
    def env(self) -> dict[str, dict[str, Any]]:
        """The proxy container's env entries by name (names must be unique)."""
        entries = self.container.get("env", [])
        names = [entry["name"] for entry in entries]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        assert not duplicates, f"duplicate env entries: {duplicates}"
        return {entry["name"]: entry for entry in entries}

    def env_value(self, name: str) -> str | SecretRef:
        """A plain value, or the SecretRef it reads; fails for other sources."""
        entry = self.env[name]
        if "value" in entry:
            return entry["value"]
        ref = entry["valueFrom"]["secretKeyRef"]
        return SecretRef(ref["name"], ref["key"])

    def secret_data(self, name: str) -> dict[str, str]:
        for secret in self.all("Secret"):
            if secret["metadata"]["name"] == name:
                data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
                data.update(secret.get("stringData") or {})
                return data
        raise KeyError(f"no Secret {name!r} in the render")

    def resolved_env(self, secrets: Mapping[SecretRef, str] | None = None) -> dict[str, str]:
        """The environment the container would see: plain values, the pod IP from
        the Downward API, and Secret keys (from the render or ``secrets``)."""
        env: dict[str, str] = {}
        for name, entry in self.env.items():
            if "value" in entry:
                env[name] = entry["value"]
                continue
            source = entry["valueFrom"]
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[name] = POD_IP if path == "status.podIP" else f"<{path}>"
            elif "secretKeyRef" in source:
                ref = SecretRef(source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
                if secrets and ref in secrets:
                    env[name] = secrets[ref]
                else:
                    env[name] = self.secret_data(ref.name)[ref.key]
            else:
                raise AssertionError(f"unexpected env source for {name}: {source}")
        return env


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two values trees (override wins)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class RenderError(AssertionError):
    pass


@dataclass
class HelmTemplate:
    """Runs the helm-template binary on the chart."""

    binary: Path

    def run(
        self, *args: str, values: Mapping[str, Any] | None = None, backend: str | None = BACKEND
    ) -> subprocess.CompletedProcess[str]:
        """Render as release "proxy" in namespace "db".

        ``values`` go in as a values file on stdin (typed as YAML, unlike
        --set) with ``backend.service`` = ``backend`` underneath them; ``args``
        come after it, so their -f files and --set flags win.
        """
        command = [str(self.binary), "--name", "proxy", "--namespace", "db"]
        layered = _merge({"backend": {"service": backend}} if backend is not None else {}, values or {})
        if layered:
            command += ["-f", "-"]
        command += [*args, str(CHART)]
        return subprocess.run(
            command,
            input=yaml.safe_dump(layered) if layered else None,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def render(self, *args: str, **kwargs: Any) -> Rendered:
        """Render and parse; a failed render fails the test with helm's message."""
        result = self.run("--notes", *args, **kwargs)
        if result.returncode != 0:
            raise RenderError(f"render failed ({result.returncode}):\n{result.stderr}")
        notes = result.stderr.split("NOTES:", 1)[-1] if "NOTES:" in result.stderr else result.stderr
        return Rendered(result.stdout, notes=notes)


@pytest.fixture(scope="session")
def helm_template(tmp_path_factory: pytest.TempPathFactory) -> HelmTemplate:
    """Build the renderer once per session (apt-installs Go packages if missing)."""
    if not BUILD_SCRIPT.is_file():
        pytest.fail(f"the chart renderer is missing: {BUILD_SCRIPT} (shared/ must sit beside the repo)")
    binary = tmp_path_factory.mktemp("helm-template") / "helm-template"
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(binary)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0 or not binary.is_file():
        pytest.fail(f"building helm-template failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return HelmTemplate(binary)


@pytest.fixture(scope="session")
def default_render(helm_template: HelmTemplate) -> Rendered:
    """values.yaml plus backend.service only: what `helm install --set backend.service=...` creates."""
    return helm_template.render()


@pytest.fixture(scope="session")
def full_render(helm_template: HelmTemplate) -> Rendered:
    """Every optional feature on (ci/full-values.yaml)."""
    return helm_template.render("-f", str(FULL_VALUES), backend=None)


@pytest.fixture(scope="session")
def kubernetes_validate() -> Iterator[str]:
    """Path of the kubernetes-validate command (pip package kubernetes-validate)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    command = shutil.which("kubernetes-validate", path=search)
    if command is None:
        pytest.fail("kubernetes-validate is not installed: pip install 'kubernetes-validate==1.37.0'")
    yield command
