// The status page's script: polls admin/backends and draws the pool.
//
// Two parts.  The pure helpers (formatting, the summary's arithmetic) touch
// no DOM and are exported under node for `node --test`; in the browser the
// same file runs as the page's inline script and starts the page instead.
"use strict";

const StatusFormat = (() => {
  const HEALTHS = ["active", "draining", "down", "unknown"];

  const pad = (n) => String(n).padStart(2, "0");
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const fmtInt = (v) => (isNum(v) ? v.toLocaleString("en-US") : "—");
  const healthOf = (h) => (HEALTHS.includes(h) ? h : "unknown");
  const healthClass = (h) => `health-${healthOf(h)}`;

  function fmtClock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtAgo(ms) {
    const s = Math.max(0, ms / 1000);
    if (s < 60) return `${s.toFixed(1)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s ago`;
    if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
    return `${(s / 86400).toFixed(1)} d ago`;
  }

  function fmtMs(v) {
    if (!isNum(v)) return "—";
    const text = v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v).toLocaleString("en-US");
    return `${text} ms`;
  }

  function truncate(text, max) {
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  function parseTime(iso) {
    const ms = typeof iso === "string" ? Date.parse(iso) : Number.NaN;
    return Number.isFinite(ms) ? ms : null;
  }

  function hostPort(b) {
    const host = String(b.address).includes(":") ? `[${b.address}]` : String(b.address);
    return `${host}:${b.port}`;
  }

  // The totals row: the server's totals when it sends them, else sums over the backends.
  function summarize(data, backends) {
    const totals = data.totals && typeof data.totals === "object" ? data.totals : {};
    const counts = { active: 0, draining: 0, down: 0, unknown: 0 };
    for (const b of backends) counts[healthOf(b.health)] += 1;
    const sum = (key) => backends.reduce((acc, b) => acc + (isNum(b[key]) ? b[key] : 0), 0);
    const pick = (...values) => values.find(isNum);

    const summary = {
      backends: pick(totals.backends, backends.length),
      counts,
      shownHealths: HEALTHS.filter((h) => counts[h] > 0 || h !== "unknown"),
      routable: pick(totals.routable, data.routable),
      held: pick(totals.held, data.held_requests),
      inflight: pick(totals.inflight, sum("inflight")),
    };
    const byOutcome = totals.requests && typeof totals.requests === "object" ? totals.requests : null;
    if (byOutcome) {
      const entries = Object.entries(byOutcome)
        .filter(([, v]) => isNum(v))
        .sort(([a], [b]) => a.localeCompare(b));
      summary.requests = entries.reduce((acc, [, v]) => acc + v, 0);
      summary.outcomes = entries.length
        ? entries.map(([k, v]) => `${k} ${fmtInt(v)}`).join(" · ")
        : "none yet";
    } else {
      summary.requests = sum("requests");
      summary.outcomes = "forwarded to backends";
    }
    const down = counts.down;
    summary.title = `${down ? `(${down} down) ` : ""}${String(data.service || "")} · hyperbytedb-proxy`;
    return summary;
  }

  return {
    HEALTHS,
    isNum,
    fmtInt,
    healthClass,
    fmtClock,
    fmtAgo,
    fmtMs,
    truncate,
    parseTime,
    hostPort,
    summarize,
  };
})();

function startStatusPage(document, F) {
  // Relative to this page: /admin -> /admin/backends, and still right behind a path prefix.
  const ENDPOINT = "admin/backends";
  const REFRESH_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const MAX_TRANSITIONS = 4;
  const MAX_ERROR_CHARS = 80;
  const MAX_REASON_CHARS = 60;

  const byId = (id) => document.getElementById(id);
  const rows = byId("rows");
  const banner = byId("error");
  const updated = byId("updated");
  const pauseButton = byId("pause");

  let paused = false;
  let timer = null;
  let busy = false;
  let lastOkAt = null; // browser clock, ms
  let skewMs = 0; // browser clock minus server clock, when the server says what time it is

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

  // A relative time that the ticker keeps current between refreshes.
  function agoNode(iso) {
    const at = F.parseTime(iso);
    if (at === null) return el("span", { class: "muted" }, "never");
    return el("time", { datetime: iso, title: iso, "data-at": at }, F.fmtAgo(Date.now() - skewMs - at));
  }

  function badge(health) {
    return el("span", { class: `badge ${F.healthClass(health)}` }, health);
  }

  function transitionsNode(list) {
    if (!Array.isArray(list) || list.length === 0) return el("span", { class: "muted" }, "—");
    const items = list
      .slice(-MAX_TRANSITIONS)
      .reverse()
      .map((t) => {
        const at = F.parseTime(t.at);
        const reason = t.reason ? String(t.reason) : "";
        return el(
          "li",
          {},
          el(
            "span",
            { class: "change" },
            el("span", { class: "from" }, String(t.from)),
            " → ",
            el("span", { class: "to" }, String(t.to)),
            at === null ? null : " ",
            at === null ? null : el("time", { datetime: t.at, title: t.at }, F.fmtClock(at)),
          ),
          reason
            ? el("span", { class: "reason", title: reason }, ` (${F.truncate(reason, MAX_REASON_CHARS)})`)
            : null,
        );
      });
    return el("ol", { class: "transitions" }, ...items);
  }

  function backendRow(b) {
    const health = String(b.health);
    const error = b.last_error ? String(b.last_error) : "";
    const failures =
      F.isNum(b.consecutive_failures) && b.consecutive_failures > 0
        ? el("div", { class: "muted" }, `${b.consecutive_failures} failed in a row`)
        : null;
    return el(
      "tr",
      { "data-address": b.address, "data-port": b.port, "data-health": health },
      el("th", { scope: "row" }, F.hostPort(b)),
      el("td", { "data-health": health }, badge(health)),
      el(
        "td",
        { "data-excluded": b.excluded ? "yes" : "no" },
        b.excluded ? el("span", { class: "badge excluded" }, "yes") : "no",
      ),
      el("td", { class: "num" }, F.fmtInt(b.inflight)),
      el("td", { class: "num" }, F.fmtInt(b.requests)),
      el("td", { class: "num" }, F.fmtInt(b.errors)),
      el("td", { class: "num" }, F.fmtMs(b.last_probe_latency_ms)),
      el("td", { class: "nowrap" }, agoNode(b.last_probe_at), failures),
      error
        ? el("td", { class: "error", title: error }, F.truncate(error, MAX_ERROR_CHARS))
        : el("td", { class: "muted" }, "—"),
      el("td", {}, transitionsNode(b.transitions)),
    );
  }

  function setTotal(name, value) {
    document.querySelector(`[data-total="${name}"] .value`).textContent = value;
  }

  function renderSummary(data, backends) {
    const summary = F.summarize(data, backends);
    setTotal("backends", F.fmtInt(summary.backends));
    byId("health-counts").replaceChildren(
      ...summary.shownHealths.map((h) =>
        el("span", { class: `badge ${F.healthClass(h)}`, "data-count": h }, `${summary.counts[h]} ${h}`),
      ),
    );
    setTotal("routable", F.fmtInt(summary.routable));
    setTotal("held", F.fmtInt(summary.held));
    setTotal("inflight", F.fmtInt(summary.inflight));
    setTotal("requests", F.fmtInt(summary.requests));
    byId("outcomes").textContent = summary.outcomes;
    document.title = summary.title;
  }

  function render(data) {
    const backends = data.backends;
    byId("service").textContent = data.service ? String(data.service) : "(unnamed)";
    renderSummary(data, backends);
    if (backends.length === 0) {
      rows.replaceChildren(
        el("tr", { class: "placeholder" }, el("td", { colspan: 10 }, "No backends discovered yet.")),
      );
    } else {
      rows.replaceChildren(...backends.map(backendRow));
    }
  }

  function showError(message) {
    banner.textContent =
      lastOkAt === null
        ? `Could not load backends: ${message}. Retrying every 2 s.`
        : `Could not refresh: ${message}. Showing data from ${F.fmtClock(lastOkAt)}.`;
    banner.hidden = false;
  }

  function tick() {
    const now = Date.now();
    for (const node of rows.querySelectorAll("time[data-at]")) {
      node.textContent = F.fmtAgo(now - skewMs - Number(node.getAttribute("data-at")));
    }
    if (lastOkAt !== null) {
      updated.textContent = `${paused ? "Paused · updated " : "Updated "}${F.fmtClock(lastOkAt)} (${F.fmtAgo(now - lastOkAt)})`;
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
        cache: "no-store",
        credentials: "same-origin",
        redirect: "error",
        headers: { Accept: "application/json" },
        signal: abort.signal,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      if (!data || typeof data !== "object" || !Array.isArray(data.backends)) {
        throw new Error("unexpected response");
      }
      const serverNow = F.parseTime(data.now);
      skewMs = serverNow === null ? 0 : Date.now() - serverNow;
      render(data);
      lastOkAt = Date.now();
      banner.hidden = true;
    } catch (err) {
      showError(
        err && err.name === "AbortError"
          ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s`
          : String(err?.message || err),
      );
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
    if (paused) schedule();
    else refresh();
    tick();
  });

  setInterval(tick, 1000);
  refresh();
}

if (typeof module === "object" && module.exports) {
  module.exports = StatusFormat; // node --test
} else {
  startStatusPage(document, StatusFormat);
}
