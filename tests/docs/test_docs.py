"""The documentation site: it builds, and it matches the code.

* ``mkdocs build --strict`` succeeds; with ``validation`` in mkdocs.yml set to
  ``warn``, strict mode also fails on a broken internal link or anchor.
* docs/configuration.md is what ``scripts/gen_config_docs.py`` generates from
  the settings model, names every setting's variable, and gives the Helm
  values key that tests/deploy/test_chart.py sets for it.
* docs/metrics.md names every metric the code registers, and every label
  value the code pre-creates.
* The pages mention no variable or metric that does not exist (a rename in
  the code must not leave stale docs behind).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.metrics import Metrics
from app.settings import ENV_PREFIX, Settings, env_name

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
GENERATOR = REPO / "scripts" / "gen_config_docs.py"
BUILD_TIMEOUT_SECS = 120
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_created")
# The configuration page shows what a misspelt variable looks like.
DELIBERATE_TYPOS = {"HYPERBYTEDB_PROXY_HEALTH_INTERVAL"}


def _pages() -> dict[Path, str]:
    return {
        path: path.read_text(encoding="utf-8")
        for path in sorted(DOCS.rglob("*.md"))
        if "templates" not in path.relative_to(DOCS).parts
    }


def _registered_metrics() -> dict[str, set[tuple[str, str]]]:
    """Metric names as exported (counters with ``_total``), with the label pairs already present."""
    metrics = Metrics()
    found: dict[str, set[tuple[str, str]]] = {}
    for family in metrics.registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = found.setdefault(name, set())
        for sample in family.samples:
            labels.update(item for item in sample.labels.items() if item[0] != "le")  # not the buckets
    return found


@pytest.mark.integration  # starts a process
def test_mkdocs_build_is_strict_and_clean(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]' (or pip install 'mkdocs>=1.6')")
    started = time.monotonic()
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean"]
    command += ["-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")]
    result = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECS,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert time.monotonic() - started < BUILD_TIMEOUT_SECS


@pytest.mark.integration  # starts a process
def test_configuration_page_is_generated_from_the_settings() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        "docs/configuration.md does not match the settings model; run "
        f"`python scripts/gen_config_docs.py` and commit the result:\n{result.stdout}{result.stderr}"
    )


def test_helm_keys_agree_with_the_chart_tests() -> None:
    """The values key the page gives for each setting is the one the chart's drift test sets."""
    from tests.deploy.test_chart import VALUES_OF_FIELD

    spec = importlib.util.spec_from_file_location("gen_config_docs", GENERATOR)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = generator  # dataclasses look their module up there
    spec.loader.exec_module(generator)
    for field, (values_path, _, _) in VALUES_OF_FIELD.items():
        assert values_path in generator.DOCS[field].helm, (
            f"{field}: the chart sets it through {values_path}, the docs say {generator.DOCS[field].helm}"
        )


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert f"### {env_name(field)}\n" in page, f"{env_name(field)} has no section in configuration.md"


def test_every_metric_is_documented() -> None:
    page = (DOCS / "metrics.md").read_text(encoding="utf-8")
    registered = _registered_metrics()
    assert registered, "app.metrics.Metrics registered no metric"
    for name, labels in registered.items():
        assert f"### {name}\n" in page, f"{name} has no section in metrics.md"
        for label, value in labels:
            assert f"`{label}`" in page, f"label {label} of {name} is not documented"
            assert f"`{value}`" in page, f"value {value!r} of label {label} ({name}) is not documented"


def test_docs_mention_only_existing_variables() -> None:
    known = {env_name(field).upper() for field in Settings.model_fields}
    pattern = re.compile(re.escape(ENV_PREFIX) + r"[A-Z0-9_]*[A-Z0-9](_\*)?")
    unknown = set()
    for path, text in _pages().items():
        for match in pattern.finditer(text):
            name = match.group(0)
            if name.endswith("_*"):  # a family, e.g. HYPERBYTEDB_PROXY_RETRY_BUDGET_*
                valid = any(variable.startswith(name[:-1]) for variable in known)
            else:
                valid = name in known or name in DELIBERATE_TYPOS
            if not valid:
                unknown.add(f"{path.relative_to(REPO)}: {name}")
    assert not unknown, f"the docs mention variables that are no setting: {sorted(unknown)}"


def test_docs_mention_only_existing_metrics() -> None:
    known = set(_registered_metrics())
    pattern = re.compile(r"(?<![#\w])hyperbytedb_proxy_[a-z0-9_]*[a-z0-9]")  # not the #anchors
    unknown = set()
    for path, text in _pages().items():
        for match in pattern.findall(text):
            base = next((match.removesuffix(s) for s in HISTOGRAM_SUFFIXES if match.endswith(s)), match)
            if match not in known and base not in known:
                unknown.add(f"{path.relative_to(REPO)}: {match}")
    assert not unknown, f"the docs mention metrics the code does not export: {sorted(unknown)}"
