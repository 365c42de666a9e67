#!/usr/bin/env python3
"""Render the Grafana dashboard's layout as a static HTML page, and optionally a PNG.

    python scripts/render_dashboard.py                       # HTML on stdout
    python scripts/render_dashboard.py --html out.html
    python scripts/render_dashboard.py --png docs/img/grafana-dashboard.png

Grafana itself is not needed: the page places every panel on Grafana's
24-column grid (``gridPos``) with its title, kind, unit, description and
queries, so the picture in the docs always comes from the real
``deploy/grafana/hyperbytedb-proxy.json``.  The PNG is taken by headless
Chromium (``chromium --headless --screenshot``) from a local file; nothing is
fetched from the network.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "hyperbytedb-proxy.json"
ROW_PX = 34  # height of one grid unit, as Grafana draws it (30 px + margin)
PAGE_WIDTH_PX = 1600
SCREENSHOT_TIMEOUT_SECS = 60

STYLE = """
body { margin: 0; background: #111217; color: #ccccdc; font: 13px/1.35 Inter, Helvetica, Arial, sans-serif; }
header { padding: 12px 16px; border-bottom: 1px solid #2c2d33; display: flex; gap: 16px;
  align-items: baseline; }
header h1 { font-size: 18px; margin: 0; color: #fff; font-weight: 500; }
header .vars span { background: #22252b; border: 1px solid #34373d; border-radius: 2px; padding: 2px 8px;
  margin-right: 6px; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(24, 1fr); grid-auto-rows: %(row)dpx; gap: 4px;
  padding: 8px 16px 16px; }
.panel { background: #181b1f; border: 1px solid #2c2d33; border-radius: 2px; padding: 6px 8px;
  overflow: hidden; display: flex; flex-direction: column; }
.panel h2 { font-size: 13px; margin: 0 0 2px; color: #fff; font-weight: 500; display: flex; gap: 6px; }
.panel h2 .kind { margin-left: auto; font-size: 10px; color: #8e8e99; text-transform: uppercase; }
.panel .desc { color: #8e8e99; font-size: 11px; margin-bottom: 4px; }
.panel ol { margin: 0; padding-left: 18px; font: 10.5px/1.3 "DejaVu Sans Mono", monospace; color: #9fb3ff; }
.panel ol li { margin-bottom: 2px; word-break: break-all; }
.panel ol li .legend { color: #73bf69; }
.row { grid-column: 1 / span 24; color: #fff; font-size: 15px; font-weight: 500; padding: 6px 0 0;
  border-bottom: 1px solid #2c2d33; }
"""


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _panel(panel: dict[str, Any]) -> str:
    grid = panel["gridPos"]
    place = f"grid-column: {grid['x'] + 1} / span {grid['w']}; grid-row: {grid['y'] + 1} / span {grid['h']};"
    title = html.escape(panel["title"])
    if panel["type"] == "row":
        return f'<div class="row" style="{place}">{title}</div>'
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    queries = "".join(
        f'<li><span class="legend">{html.escape(target.get("legendFormat") or target["refId"])}</span>: '
        f"{html.escape(target['expr'])}</li>"
        for target in panel.get("targets", [])
    )
    kind = html.escape(f"{panel['type']} · {unit}" if unit else panel["type"])
    return (
        f'<section class="panel" style="{place}"><h2>{title}<span class="kind">{kind}</span></h2>'
        f'<div class="desc">{html.escape(panel.get("description", ""))}</div><ol>{queries}</ol></section>'
    )


def render_html(board: dict[str, Any]) -> str:
    """The page: a header with the variables, then every panel on the grid."""
    variables = "".join(
        f"<span>{html.escape(v.get('label') or v['name'])}: All</span>"
        for v in board.get("templating", {}).get("list", [])
        if v["type"] != "datasource"
    )
    panels = "\n".join(_panel(panel) for panel in board["panels"])
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(board['title'])}</title><style>{STYLE % {'row': ROW_PX}}</style></head>"
        f"<body><header><h1>{html.escape(board['title'])}</h1><div class='vars'>{variables}</div></header>"
        f'<main class="grid">\n{panels}\n</main></body></html>\n'
    )


def page_height(board: dict[str, Any]) -> int:
    bottom = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in board["panels"])
    return 60 + bottom * (ROW_PX + 4) + 24


def screenshot(page: Path, png: Path, *, width: int, height: int, chromium: str) -> None:
    """Headless Chromium's screenshot of a local page (bounded in time)."""
    with tempfile.TemporaryDirectory(prefix="dashboard-chromium-") as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=SCREENSHOT_TIMEOUT_SECS,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--html", type=Path, help="write the page here (default: stdout, unless --png)")
    parser.add_argument("--png", type=Path, help="also take a screenshot with headless Chromium")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    board = load(args.dashboard)
    page = render_html(board)
    if args.html:
        args.html.write_text(page, encoding="utf-8")
    elif not args.png:
        sys.stdout.write(page)
    if args.png:
        with tempfile.TemporaryDirectory(prefix="dashboard-") as tmp:
            source = args.html.resolve() if args.html else Path(tmp) / "dashboard.html"
            if not args.html:
                source.write_text(page, encoding="utf-8")
            screenshot(
                source,
                args.png.resolve(),
                width=PAGE_WIDTH_PX,
                height=page_height(board),
                chromium=args.chromium,
            )
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
