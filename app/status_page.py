"""The operator status page: ``GET /admin``, one self-contained HTML document.

The page is static: it embeds no data and no settings, only inline CSS and
vanilla JavaScript that polls ``/admin/backends`` every two seconds and draws
the pool from that JSON.  So it works offline and behind a port-forward, and
it can leak nothing the JSON endpoint does not already show.

Every value from the JSON reaches the DOM through ``textContent`` or
``setAttribute`` on inert attributes, never as markup.  The Content-Security-
Policy backs that up: scripts and styles run only with this response's nonce,
the page may talk to its own origin only, and Trusted Types forbid the
HTML-string sinks (``innerHTML`` and friends) outright.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

_NONCE = "__CSP_NONCE__"


def content_security_policy(nonce: str) -> str:
    """A policy that allows exactly this page's own inline script and style."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            "img-src data:",  # the empty favicon below, so browsers do not ask the backends for one
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        )
    )


async def status_page(request: Request) -> Response:
    """Serve the page with a fresh nonce; never cached (it is tiny and the policy changes each time)."""
    nonce = secrets.token_urlsafe(18)
    return HTMLResponse(
        _PAGE.replace(_NONCE, nonce),
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": content_security_policy(nonce),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        },
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>hyperbytedb-proxy status</title>
<link rel="icon" href="data:,">
<style nonce="__CSP_NONCE__">
:root {
  color-scheme: light;
  --fg: #1f2328; --muted: #59636e; --bg: #f6f8fa; --card: #ffffff; --border: #d1d9e0;
  --active: #1a7f37; --active-bg: #dafbe1; --active-fg: #116329;
  --draining: #bf8700; --draining-bg: #fff1c2; --draining-fg: #6c4400;
  --down: #cf222e; --down-bg: #ffebe9; --down-fg: #a40e26;
  --unknown: #818b98; --unknown-bg: #eff2f5; --unknown-fg: #3d444d;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
  font-size: 15px; line-height: 1.4; color: var(--fg); background: var(--bg);
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; }
.wrap { max-width: 1400px; margin: 0 auto; padding: 16px 20px 32px; }
header.top { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 16px; }
h1 { font-size: 1.35rem; margin: 0; }
.service { color: var(--muted); margin: 0; overflow-wrap: anywhere; }
.service strong { color: var(--fg); }
.toolbar { margin-left: auto; display: flex; align-items: center; gap: 12px; flex-wrap: wrap; }
#updated { color: var(--muted); font-variant-numeric: tabular-nums; }
button, .button {
  font: inherit; font-size: 0.9rem; padding: 4px 12px; border-radius: 6px; cursor: pointer;
  border: 1px solid var(--border); background: var(--card); color: var(--fg); text-decoration: none;
}
button:hover, .button:hover { background: #eef1f4; }
button:focus-visible, .button:focus-visible, .table-wrap:focus-visible {
  outline: 2px solid #0969da; outline-offset: 2px;
}
button[aria-pressed="true"] { background: #fff8c5; border-color: var(--draining); }
.banner {
  margin: 12px 0 0; padding: 10px 14px; border-radius: 6px; border: 1px solid var(--down);
  background: var(--down-bg); color: var(--down-fg); font-weight: 600; overflow-wrap: anywhere;
}
dl.summary { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; padding: 0; }
dl.summary > div {
  background: var(--card); border: 1px solid var(--border); border-radius: 8px;
  padding: 8px 14px; min-width: 120px; flex: 0 1 auto;
}
dl.summary > div.wide { flex: 1 1 280px; }
dt { color: var(--muted); font-size: 0.8rem; text-transform: uppercase; letter-spacing: 0.04em; }
dd { margin: 2px 0 0; font-size: 1.35rem; font-weight: 600; font-variant-numeric: tabular-nums; }
dd .detail { display: block; font-size: 0.85rem; font-weight: 400; color: var(--muted); margin-top: 2px; }
.chips { display: flex; flex-wrap: wrap; gap: 4px 6px; margin-top: 4px; font-size: 0.85rem; }
.table-wrap {
  overflow-x: auto; background: var(--card); border: 1px solid var(--border); border-radius: 8px;
}
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
caption { text-align: left; padding: 10px 12px; font-weight: 600; caption-side: top; }
caption .note { font-weight: 400; color: var(--muted); font-size: 0.85rem; margin-left: 8px; }
th, td { padding: 8px 10px; text-align: left; vertical-align: top; border-top: 1px solid var(--border); }
thead th { background: #f0f3f6; font-size: 0.8rem; color: #3d444d; vertical-align: bottom; }
tbody th {
  font-weight: 600; white-space: nowrap; font-size: 0.85rem;
  font-family: ui-monospace, "DejaVu Sans Mono", monospace;
}
tbody tr[data-health="active"] > th { box-shadow: inset 4px 0 var(--active); }
tbody tr[data-health="draining"] > th { box-shadow: inset 4px 0 var(--draining); }
tbody tr[data-health="down"] > th { box-shadow: inset 4px 0 var(--down); }
tbody tr[data-health="unknown"] > th { box-shadow: inset 4px 0 var(--unknown); }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.muted { color: var(--muted); }
.nowrap { white-space: nowrap; }
.badge {
  display: inline-flex; align-items: center; gap: 5px; padding: 1px 8px 1px 7px; border-radius: 999px;
  font-weight: 600; font-size: 0.8rem; border: 1px solid; white-space: nowrap;
}
.badge::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: currentColor; }
.health-active { color: var(--active-fg); background: var(--active-bg); border-color: var(--active); }
.health-draining { color: var(--draining-fg); background: var(--draining-bg); border-color: var(--draining); }
.health-down { color: var(--down-fg); background: var(--down-bg); border-color: var(--down); }
.health-unknown { color: var(--unknown-fg); background: var(--unknown-bg); border-color: var(--unknown); }
.badge.excluded { color: var(--draining-fg); background: var(--draining-bg); border-color: var(--draining); }
.badge.excluded::before { display: none; }
td.error { min-width: 16ch; max-width: 30ch; overflow-wrap: anywhere; color: var(--down-fg); }
ol.transitions { list-style: none; margin: 0; padding: 0; min-width: 22ch; }
ol.transitions li { font-size: 0.82rem; }
ol.transitions .change { white-space: nowrap; }
ol.transitions li + li { color: var(--muted); }
ol.transitions .to { font-weight: 600; }
ol.transitions .reason { color: var(--muted); }
.placeholder td { color: var(--muted); text-align: center; padding: 20px; }
footer { margin-top: 10px; font-size: 0.8rem; color: var(--muted); }
@media (max-width: 700px) {
  .wrap { padding: 12px 10px 24px; }
  .toolbar { margin-left: 0; width: 100%; }
  dl.summary > div { flex: 1 1 40%; min-width: 0; }
}
</style>
</head>
<body>
<div class="wrap">
  <header class="top">
    <h1>hyperbytedb-proxy</h1>
    <p class="service">Service <strong id="service">…</strong></p>
    <div class="toolbar">
      <span id="updated">Loading…</span>
      <button type="button" id="pause" aria-pressed="false">Pause</button>
      <a class="button" href="admin/backends">JSON</a>
    </div>
  </header>
  <div id="error" class="banner" role="alert" hidden></div>
  <noscript><p class="banner">This page needs JavaScript. The same data is at
    <a href="admin/backends">admin/backends</a> as JSON.</p></noscript>
  <dl class="summary" id="summary" aria-label="Totals">
    <div data-total="backends"><dt>Backends</dt><dd><span class="value">—</span>
      <span class="chips" id="health-counts"></span></dd></div>
    <div data-total="routable"><dt>Routable</dt><dd><span class="value">—</span></dd></div>
    <div data-total="held"><dt>Held requests</dt><dd><span class="value">—</span></dd></div>
    <div data-total="inflight"><dt>In flight</dt><dd><span class="value">—</span></dd></div>
    <div data-total="requests" class="wide"><dt>Requests</dt><dd><span class="value">—</span>
      <span class="detail" id="outcomes"></span></dd></div>
  </dl>
  <div class="table-wrap" role="region" aria-labelledby="backends-caption" tabindex="0">
    <table id="backends">
      <caption id="backends-caption">Backends
        <span class="note">times are this browser's local time</span></caption>
      <thead>
        <tr>
          <th scope="col">Backend</th>
          <th scope="col">Health</th>
          <th scope="col">Excluded</th>
          <th scope="col" class="num">In flight</th>
          <th scope="col" class="num">Requests</th>
          <th scope="col" class="num">Errors</th>
          <th scope="col" class="num">Probe latency</th>
          <th scope="col">Last probe</th>
          <th scope="col">Last error</th>
          <th scope="col">Recent transitions</th>
        </tr>
      </thead>
      <tbody id="rows"><tr class="placeholder"><td colspan="10">Loading…</td></tr></tbody>
    </table>
  </div>
  <footer>Refreshes every 2 s from <code>admin/backends</code>.</footer>
</div>
<script nonce="__CSP_NONCE__">
"use strict";
(() => {
  // Relative to this page: /admin -> /admin/backends, and still right behind a path prefix.
  const ENDPOINT = "admin/backends";
  const REFRESH_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const MAX_TRANSITIONS = 4;
  const MAX_ERROR_CHARS = 80;
  const MAX_REASON_CHARS = 60;
  const HEALTHS = ["active", "draining", "down", "unknown"];

  const byId = (id) => document.getElementById(id);
  const rows = byId("rows");
  const banner = byId("error");
  const updated = byId("updated");
  const pauseButton = byId("pause");

  let paused = false;
  let timer = null;
  let busy = false;
  let lastOkAt = null;    // browser clock, ms
  let skewMs = 0;         // browser clock minus server clock, when the server says what time it is

  // Build an element; strings become text nodes, so data is never parsed as markup.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const pad = (n) => String(n).padStart(2, "0");
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmtInt = (v) => (isNum(v) ? v.toLocaleString("en-US") : "—");
  const healthClass = (h) => "health-" + (HEALTHS.includes(h) ? h : "unknown");

  function fmtClock(ms) {
    const d = new Date(ms);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function fmtAgo(ms) {
    const s = Math.max(0, ms / 1000);
    if (s < 60) return s.toFixed(1) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s ago";
    if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " d ago";
  }

  function fmtMs(v) {
    if (!isNum(v)) return "—";
    return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v).toLocaleString("en-US")) + " ms";
  }

  function truncate(text, max) {
    return text.length > max ? text.slice(0, max - 1) + "…" : text;
  }

  function parseTime(iso) {
    const ms = typeof iso === "string" ? Date.parse(iso) : NaN;
    return Number.isFinite(ms) ? ms : null;
  }

  // A relative time that the ticker keeps current between refreshes.
  function agoNode(iso) {
    const at = parseTime(iso);
    if (at === null) return el("span", { class: "muted" }, "never");
    return el("time", { datetime: iso, title: iso, "data-at": at }, fmtAgo(Date.now() - skewMs - at));
  }

  function badge(health) {
    return el("span", { class: "badge " + healthClass(health) }, health);
  }

  function hostPort(b) {
    const host = String(b.address).includes(":") ? "[" + b.address + "]" : String(b.address);
    return host + ":" + b.port;
  }

  function transitionsNode(list) {
    if (!Array.isArray(list) || list.length === 0) return el("span", { class: "muted" }, "—");
    const items = list.slice(-MAX_TRANSITIONS).reverse().map((t) => {
      const at = parseTime(t.at);
      const reason = t.reason ? String(t.reason) : "";
      return el("li", {},
        el("span", { class: "change" },
          el("span", { class: "from" }, String(t.from)), " → ",
          el("span", { class: "to" }, String(t.to)),
          at === null ? null : " ",
          at === null ? null : el("time", { datetime: t.at, title: t.at }, fmtClock(at))),
        reason ? el("span", { class: "reason", title: reason },
          " (" + truncate(reason, MAX_REASON_CHARS) + ")") : null);
    });
    return el("ol", { class: "transitions" }, ...items);
  }

  function ejectionNode(ejection) {
    if (!ejection) return null;
    const until = ejection.until ? new Date(ejection.until).toLocaleTimeString() : "?";
    return el("div", { class: "error", "data-ejected": "yes" },
      "not routable: " + String(ejection.reason) + ", until " + until);
  }

  function backendRow(b) {
    const health = String(b.health);
    const error = b.last_error ? String(b.last_error) : "";
    const failures = isNum(b.consecutive_failures) && b.consecutive_failures > 0
      ? el("div", { class: "muted" }, b.consecutive_failures + " failed in a row") : null;
    return el("tr", { "data-address": b.address, "data-port": b.port, "data-health": health },
      el("th", { scope: "row" }, hostPort(b)),
      el("td", { "data-health": health }, badge(health), ejectionNode(b.ejection)),
      el("td", { "data-excluded": b.excluded ? "yes" : "no" },
        b.excluded ? el("span", { class: "badge excluded" }, "yes") : "no"),
      el("td", { class: "num" }, fmtInt(b.inflight)),
      el("td", { class: "num" }, fmtInt(b.requests)),
      el("td", { class: "num" }, fmtInt(b.errors)),
      el("td", { class: "num" }, fmtMs(b.last_probe_latency_ms)),
      el("td", { class: "nowrap" }, agoNode(b.last_probe_at), failures),
      error ? el("td", { class: "error", title: error }, truncate(error, MAX_ERROR_CHARS))
            : el("td", { class: "muted" }, "—"),
      el("td", {}, transitionsNode(b.transitions)));
  }

  function setTotal(name, value) {
    document.querySelector('[data-total="' + name + '"] .value').textContent = value;
  }

  function renderSummary(data, backends) {
    const totals = data.totals && typeof data.totals === "object" ? data.totals : {};
    const counts = { active: 0, draining: 0, down: 0, unknown: 0 };
    for (const b of backends) counts[HEALTHS.includes(b.health) ? b.health : "unknown"] += 1;
    const sum = (key) => backends.reduce((acc, b) => acc + (isNum(b[key]) ? b[key] : 0), 0);
    const pick = (...values) => values.find(isNum);

    setTotal("backends", fmtInt(pick(totals.backends, backends.length)));
    byId("health-counts").replaceChildren(...HEALTHS.filter((h) => counts[h] > 0 || h !== "unknown")
      .map((h) => el("span", { class: "badge " + healthClass(h), "data-count": h }, counts[h] + " " + h)));
    setTotal("routable", fmtInt(pick(totals.routable, data.routable)));
    setTotal("held", fmtInt(pick(totals.held, data.held_requests)));
    setTotal("inflight", fmtInt(pick(totals.inflight, sum("inflight"))));

    const outcomes = byId("outcomes");
    const byOutcome = totals.requests && typeof totals.requests === "object" ? totals.requests : null;
    if (byOutcome) {
      const entries = Object.entries(byOutcome).filter(([, v]) => isNum(v))
        .sort(([a], [b]) => a.localeCompare(b));
      setTotal("requests", fmtInt(entries.reduce((acc, [, v]) => acc + v, 0)));
      outcomes.textContent = entries.length
        ? entries.map(([k, v]) => k + " " + fmtInt(v)).join(" · ") : "none yet";
    } else {
      setTotal("requests", fmtInt(sum("requests")));
      outcomes.textContent = "forwarded to backends";
    }
    const down = counts.down;
    document.title = (down ? "(" + down + " down) " : "") + String(data.service || "")
      + " · hyperbytedb-proxy";
  }

  function render(data) {
    const backends = data.backends;
    byId("service").textContent = data.service ? String(data.service) : "(unnamed)";
    renderSummary(data, backends);
    if (backends.length === 0) {
      rows.replaceChildren(el("tr", { class: "placeholder" },
        el("td", { colspan: 10 }, "No backends discovered yet.")));
    } else {
      rows.replaceChildren(...backends.map(backendRow));
    }
  }

  function showError(message) {
    banner.textContent = lastOkAt === null
      ? "Could not load backends: " + message + ". Retrying every 2 s."
      : "Could not refresh: " + message + ". Showing data from " + fmtClock(lastOkAt) + ".";
    banner.hidden = false;
  }

  function tick() {
    const now = Date.now();
    for (const node of rows.querySelectorAll("time[data-at]")) {
      node.textContent = fmtAgo(now - skewMs - Number(node.getAttribute("data-at")));
    }
    if (lastOkAt !== null) {
      updated.textContent = (paused ? "Paused · updated " : "Updated ") + fmtClock(lastOkAt)
        + " (" + fmtAgo(now - lastOkAt) + ")";
    } else {
      updated.textContent = paused ? "Paused · no data yet" : "No data yet";
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = paused ? null : setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    const abort = new AbortController();
    const deadline = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(ENDPOINT, {
        cache: "no-store", credentials: "same-origin", redirect: "error",
        headers: { Accept: "application/json" }, signal: abort.signal,
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      if (!data || typeof data !== "object" || !Array.isArray(data.backends)) {
        throw new Error("unexpected response");
      }
      const serverNow = parseTime(data.now);
      skewMs = serverNow === null ? 0 : Date.now() - serverNow;
      render(data);
      lastOkAt = Date.now();
      banner.hidden = true;
    } catch (err) {
      showError(err && err.name === "AbortError" ? "no answer within " + FETCH_TIMEOUT_MS / 1000 + " s"
        : String((err && err.message) || err));
    } finally {
      clearTimeout(deadline);
      busy = false;
      tick();
      schedule();
    }
  }

  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.setAttribute("aria-pressed", String(paused));
    pauseButton.textContent = paused ? "Resume" : "Pause";
    if (paused) schedule(); else refresh();
    tick();
  });

  setInterval(tick, 1000);
  refresh();
})();
</script>
</body>
</html>
"""
