// Unit tests of the status page's pure helpers: node --test tests/js/
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");

const F = require("../../app/static/status.js");

test("relative times pick a readable unit", () => {
  assert.equal(F.fmtAgo(-5), "0.0 s ago"); // clock skew never shows a future time
  assert.equal(F.fmtAgo(1500), "1.5 s ago");
  assert.equal(F.fmtAgo(65_000), "1 min 5 s ago");
  assert.equal(F.fmtAgo(2 * 3600_000), "2.0 h ago");
  assert.equal(F.fmtAgo(3 * 86400_000), "3.0 d ago");
});

test("latencies keep about three significant digits", () => {
  assert.equal(F.fmtMs(1.234), "1.23 ms");
  assert.equal(F.fmtMs(12.34), "12.3 ms");
  assert.equal(F.fmtMs(1234.5), "1,235 ms");
  assert.equal(F.fmtMs(null), "—");
  assert.equal(F.fmtMs(Number.NaN), "—");
});

test("counts, truncation, addresses and times", () => {
  assert.equal(F.fmtInt(1234567), "1,234,567");
  assert.equal(F.fmtInt("12"), "—");
  assert.equal(F.truncate("abcdef", 4), "abc…");
  assert.equal(F.truncate("abc", 4), "abc");
  assert.equal(F.hostPort({ address: "10.0.0.1", port: 8086 }), "10.0.0.1:8086");
  assert.equal(F.hostPort({ address: "fd00::1", port: 8086 }), "[fd00::1]:8086");
  assert.equal(F.parseTime("2026-01-02T03:04:05Z"), Date.UTC(2026, 0, 2, 3, 4, 5));
  assert.equal(F.parseTime("yesterday"), null);
  assert.equal(F.parseTime(42), null);
  assert.equal(F.healthClass("down"), "health-down");
  assert.equal(F.healthClass("<b>odd</b>"), "health-unknown");
});

test("the summary prefers the server's totals", () => {
  const backends = [
    { health: "active", inflight: 2, requests: 10 },
    { health: "down", inflight: 1, requests: 5 },
  ];
  const data = {
    service: "db",
    routable: 1,
    held_requests: 0,
    totals: { backends: 3, routable: 2, held: 4, inflight: 7, requests: { ok: 9, fatal: 1, junk: "x" } },
  };
  const s = F.summarize(data, backends);
  assert.deepEqual([s.backends, s.routable, s.held, s.inflight, s.requests], [3, 2, 4, 7, 10]);
  assert.equal(s.outcomes, "fatal 1 · ok 9");
  assert.equal(s.title, "(1 down) db · hyperbytedb-proxy");
});

test("without totals the summary sums the backends", () => {
  const backends = [
    { health: "active", inflight: 2, requests: 10 },
    { health: "mystery", inflight: "x", requests: 5 },
  ];
  const s = F.summarize({ service: "db", routable: 1, held_requests: 3, backends }, backends);
  assert.deepEqual([s.backends, s.routable, s.held, s.inflight, s.requests], [2, 1, 3, 2, 15]);
  assert.deepEqual(s.counts, { active: 1, draining: 0, down: 0, unknown: 1 });
  assert.deepEqual(s.shownHealths, ["active", "draining", "down", "unknown"]);
  assert.equal(s.outcomes, "forwarded to backends");
  assert.equal(s.title, "db · hyperbytedb-proxy");
});

test("unknown health is listed only when some backend has it", () => {
  const s = F.summarize({ totals: { requests: {} } }, [{ health: "active" }]);
  assert.deepEqual(s.shownHealths, ["active", "draining", "down"]);
  assert.equal(s.outcomes, "none yet");
});

test("an ejected backend says why and until when", () => {
  const until = "2026-01-02T03:04:05.000+00:00";
  const text = F.ejectionText({ reason: "outlier: 5 consecutive 502", until });
  assert.equal(text, `not routable: outlier: 5 consecutive 502, until ${F.fmtClock(Date.parse(until))}`);
  assert.equal(
    F.ejectionText({ reason: "outlier: 5 consecutive 502", until: "later" }).endsWith("until ?"),
    true,
  );
  assert.equal(F.ejectionText(null), null);
  assert.equal(F.ejectionText(undefined), null);
});
