"""Static checks of the Containerfile (no container engine runs here).

What is checked: the two stages and their base image, where the wheels are
built and installed, the non-root numeric user, the entrypoint against the
package's console scripts, the exposed port, the OCI labels, and that nothing
in the runtime stage prepares a writable path outside /tmp. Also the places
where the image and the chart must agree (user, port, gunicorn config path).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest
import yaml

from .conftest import CHART, REPO

CONTAINERFILE = REPO / "Containerfile"
IGNOREFILE = REPO / ".dockerignore"


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and stages; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Containerfile ends inside a continuation line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", args, re.I)
            assert match, f"every stage needs a name: FROM {args}"
            stages.append(Stage(base=match[1], name=match[2]))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


def env_pairs(args: str) -> dict[str, str]:
    """ENV a=b c="d e" (the legacy `ENV a b` form is not used here)."""
    pairs = {}
    for token in shlex.split(args):
        assert "=" in token, f"use ENV key=value: {args}"
        key, _, value = token.partition("=")
        pairs[key] = value
    return pairs


@pytest.fixture(scope="module")
def containerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages = parse(CONTAINERFILE.read_text())
    return global_args, {stage.name: stage for stage in stages}


@pytest.fixture(scope="module")
def runtime(containerfile: tuple[dict[str, str], dict[str, Stage]]) -> Stage:
    return containerfile[1]["runtime"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_two_stages_on_a_pinned_slim_python(containerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    global_args, stages = containerfile
    assert list(stages) == ["build", "runtime"]
    for stage in stages.values():
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], stage.base)
        # python:3.X-slim or python:3.X-slim-<debian>; the minor is pinned.
        assert re.fullmatch(r"(docker\.io/library/)?python:3\.(11|12)-slim(-\w+)?", base), base
    assert stages["build"].base == stages["runtime"].base, "wheels must be built for the runtime's Python"


def test_wheels_are_built_then_installed(containerfile: tuple[dict[str, str], dict[str, Stage]]) -> None:
    _, stages = containerfile
    build_runs = " ".join(stages["build"].all("RUN"))
    # Dependencies from the lock, hashes checked; then the project without resolving again.
    locked = r"pip wheel\b.*--wheel-dir[ =]/wheels\s+--require-hashes -r requirements\.lock"
    assert re.search(locked, build_runs), build_runs
    assert re.search(r"pip wheel\b.*--wheel-dir[ =]/wheels\s+--no-deps \.(\s|$)", build_runs), build_runs
    assert "requirements.lock" in " ".join(stages["build"].all("COPY"))
    # The multi-worker mode (chart: server.workers > 1) needs these; requirements.lock is
    # locked with this extra (tests/unit/test_lock_files.py).
    # The extra that brings gunicorn and uvicorn-worker must exist in pyproject.toml.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = " ".join(pyproject["project"]["optional-dependencies"]["gunicorn"])
    assert "gunicorn" in extra and "uvicorn-worker" in extra

    runtime_runs = " ".join(stages["runtime"].all("RUN"))
    copies = " ".join(stages["runtime"].all("COPY"))
    assert "from=build" in runtime_runs or "--from=build" in copies
    assert re.search(r"pip install --no-index\b.*/wheels", runtime_runs), runtime_runs
    # Nothing is compiled in the runtime stage.
    assert "apt-get" not in runtime_runs and "gcc" not in runtime_runs


def test_runs_as_numeric_non_root_user(runtime: Stage) -> None:
    users = runtime.all("USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER must be numeric for runAsNonRoot: {user}"
    uid, _, gid = user.partition(":")
    assert int(uid) != 0 and (not gid or int(gid) != 0)


def test_entrypoint_is_the_console_script(runtime: Stage, pyproject: dict) -> None:
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["hyperbytedb-proxy"]  # exec form: signals reach the proxy
    assert pyproject["project"]["scripts"]["hyperbytedb-proxy"] == "app.__main__:main"
    assert not runtime.all("CMD") or json.loads(runtime.all("CMD")[-1]) == []


def test_exposes_8086(runtime: Stage) -> None:
    assert "8086" in " ".join(runtime.all("EXPOSE")).split()


def test_oci_labels(runtime: Stage, pyproject: dict) -> None:
    labels = env_pairs(" ".join(runtime.all("LABEL")))
    for key in ("title", "description", "source", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"missing label org.opencontainers.image.{key}"
    assert labels["org.opencontainers.image.title"] == "hyperbytedb-proxy"
    assert labels["org.opencontainers.image.licenses"] == pyproject["project"]["license"]  # SPDX
    # The version label defaults to the package version (and the chart's appVersion).
    args = dict(arg.partition("=")[::2] for arg in runtime.all("ARG"))
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert args["VERSION"] == pyproject["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == pyproject["project"]["version"]


def test_read_only_root_filesystem(runtime: Stage) -> None:
    env = env_pairs(" ".join(runtime.all("ENV")))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    # Everything a library might write to (home, caches, temp files, metrics)
    # points under /tmp, the container's only writable path.
    for key in ("HOME", "TMPDIR"):
        assert key in env, f"ENV {key} is not set"
    path_keys = {"HOME", "TMPDIR", "XDG_CACHE_HOME", "PROMETHEUS_MULTIPROC_DIR", "PYTHONPYCACHEPREFIX"}
    for key, value in env.items():
        if value.startswith("/") or key in path_keys:
            assert value == "/tmp" or value.startswith("/tmp/"), f"ENV {key}={value} is outside /tmp"
    assert not runtime.all("VOLUME"), "VOLUME creates writable paths outside the chart's control"
    # No writable directory is prepared for the runtime user outside /tmp.
    for run in runtime.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            words = command.split()
            if words and words[0] in {"mkdir", "chown", "chmod", "touch", "install"}:
                targets = [w for w in words[1:] if w.startswith("/")]
                assert all(t == "/tmp" or t.startswith("/tmp/") for t in targets), command
    # Files copied into the image stay root-owned (read-only for the user).
    for copy in runtime.all("COPY"):
        assert "--chown" not in copy and "--chmod" not in copy, copy


def test_gunicorn_config_is_where_the_chart_expects_it(runtime: Stage) -> None:
    copies = [shlex.split(c) for c in runtime.all("COPY")]
    assert ["gunicorn.conf.py", "/app/gunicorn.conf.py"] in copies
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "- /app/gunicorn.conf.py" in deployment
    assert "- app.main:create_app_from_env()" in deployment


def test_image_and_chart_agree(runtime: Stage) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid, _, gid = runtime.all("USER")[-1].partition(":")
    for context in (values["podSecurityContext"], values["securityContext"]):
        assert context["runAsUser"] == int(uid)
        assert context["runAsGroup"] == int(gid or uid)
    assert values["server"]["port"] == 8086 == values["service"]["port"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for this file: last match wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            ignored = not negate
    return ignored


def test_copied_files_exist_and_are_in_the_build_context(
    containerfile: tuple[dict[str, str], dict[str, Stage]],
) -> None:
    patterns = [
        line.strip()
        for line in IGNOREFILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    _, stages = containerfile
    for stage in stages.values():
        for copy in stage.all("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            for source in words[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the repo"
                assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # Local clutter never reaches the build context.
    for clutter in (".venv", "tests", "helm", ".git", "app/__pycache__"):
        assert _ignored(clutter, patterns), clutter
