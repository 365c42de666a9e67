"""The Grafana dashboard: valid layout, and every query is PromQL over metrics the proxy exports.

A renamed metric must fail here rather than leave an empty panel in someone's
Grafana.  Grafana's own variables ($__rate_interval, $namespace, ...) are
replaced by plain values before parsing, as Grafana does before it sends a
query.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from app.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "hyperbytedb-proxy.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRID_WIDTH = 24
# Grafana's built-in interval variables, and this dashboard's own variables.
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def exported_metrics() -> set[str]:
    """Series names the proxy exposes, histograms with their suffixes."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(family.name)
    return names


def queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert match, f"variable {variable['name']}: expected label_values(<selector>, <label>)"
            yield f"variable {variable['name']}", match.group(1)


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return _INTERVALS.get(name, ".*")

    return _VARIABLE.sub(value, expr)


def metric_names(node: Any) -> Iterator[str]:
    """Metric names of every selector in a parsed expression."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name is not None:
            yield node.name
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                yield matcher.value
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from metric_names(node.vector_selector)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from metric_names(arg)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from metric_names(node.expr)
        if node.param is not None:
            yield from metric_names(node.param)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from metric_names(node.lhs)
        yield from metric_names(node.rhs)
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        yield from metric_names(node.expr)


QUERIES = list(queries())


def test_the_dashboard_has_queries() -> None:
    assert len(QUERIES) >= 20


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_every_query_parses_and_uses_only_exported_metrics(where: str, expr: str) -> None:
    try:
        parsed = promql_parser.parse(substitute(expr))
    except ValueError as exc:
        pytest.fail(f"{where}: not PromQL: {exc}\n{expr}")
    names = set(metric_names(parsed))
    assert names, f"{where}: selects no metric"
    unknown = names - exported_metrics()
    assert not unknown, f"{where}: the proxy exports no {sorted(unknown)}"


def test_the_checker_catches_a_wrong_metric_and_bad_syntax() -> None:
    parsed = promql_parser.parse(
        substitute('sum(rate(hyperbytedb_proxy_request_total{pod=~"$pod"}[$__rate_interval]))')
    )
    assert set(metric_names(parsed)) - exported_metrics() == {"hyperbytedb_proxy_request_total"}
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(hyperbytedb_proxy_requests_total[5m])")


def test_panels_cover_what_operators_look_for() -> None:
    exprs = " ".join(expr for _, expr in QUERIES)
    for wanted in (
        "sum by (outcome) (rate(hyperbytedb_proxy_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(hyperbytedb_proxy_request_duration_seconds_bucket",
        "max by (health) (hyperbytedb_proxy_backends",
        "hyperbytedb_proxy_routable_backends",
        "hyperbytedb_proxy_held_requests",
        "sum by (reason) (rate(hyperbytedb_proxy_retries_total",
        "hyperbytedb_proxy_retries_denied_total",
        "hyperbytedb_proxy_buffered_request_bytes",
        "sum by (backend) (hyperbytedb_proxy_backend_inflight_requests",
        "sum by (backend) (rate(hyperbytedb_proxy_backend_errors_total",
    ):
        assert wanted in exprs, wanted


def test_layout_is_a_valid_grid_with_unique_ids() -> None:
    board = dashboard()
    assert board["uid"] == "hyperbytedb-proxy"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps another panel"
                cells.add((x, y))
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["description"], panel["title"]


def _renderer() -> Any:
    spec = importlib.util.spec_from_file_location(
        "render_dashboard", REPO / "scripts" / "render_dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_static_renderer_shows_every_panel_and_query() -> None:
    page = _renderer().render_html(dashboard())
    for panel in dashboard()["panels"]:
        assert html.escape(panel["title"]) in page
        for target in panel.get("targets", []):
            assert html.escape(target["expr"]) in page
    # The screenshot in the docs is a PNG made from this page.
    assert (REPO / "docs" / "img" / "grafana-dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
