"""Scenarios 1-7: faults of simulated HyperbyteDB nodes (and of the proxy itself) under load.

Every scenario builds a fresh cluster in its own directory, runs load for at
least ``Options.duration`` seconds, injects its fault (repeated while time
allows in the full run), then stops the load, counts the acknowledged points
on the nodes and records checks.  A scenario never raises for a failed
expectation: it returns a :class:`ScenarioResult` whose checks say what broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from chaos.harness import SERVICE, SPARE_IP, Cluster, access_log, env_secs
from chaos.load import CLIENT_TIMEOUT_SECS, Load, Sample
from chaos.report import ScenarioResult
from sim.node import stream_chunk

MAX_ROUNDS = 50  # fault cycles per scenario; the duration ends them long before


@dataclass(frozen=True, slots=True)
class Options:
    short: bool
    duration: float  # seconds of load per scenario (at least; a fault sequence may need longer)
    workdir: Path
    clients: int = 12
    proxy_argv: tuple[str, ...] | None = None  # default: ``python -m app``

    @property
    def warmup(self) -> float:
        return 1.0 if self.short else 3.0


Scenario = Callable[[Options], Awaitable[ScenarioResult]]


# --------------------------------------------------------------------------- plumbing


class Session:
    """A running cluster with load on it, for the duration of one scenario."""

    def __init__(self, cluster: Cluster, load: Load, opts: Options) -> None:
        self.cluster = cluster
        self.load = load
        self.opts = opts
        self.deadline = load.started + opts.duration
        self.events: list[tuple[float, str]] = []

    @property
    def health_interval(self) -> float:
        return env_secs(self.cluster.proxy_env, "HEALTH_INTERVAL_SECS")

    @property
    def probe_timeout(self) -> float:
        return env_secs(self.cluster.proxy_env, "HEALTH_TIMEOUT_MS")

    def mark(self, what: str) -> float:
        now = time.monotonic()
        self.events.append((now, what))
        return now

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    async def until_deadline(self, *, at_least: float = 1.0) -> None:
        """Keep the load running until the duration is used up, and ``at_least`` more seconds."""
        await asyncio.sleep(max(at_least, self.time_left()))

    def write_timeline(self) -> None:
        """The fault steps, in seconds since the load started, next to the process logs."""
        lines = [f"{at - self.load.started:8.3f}  {what}" for at, what in self.events]
        (self.cluster.workdir / "timeline.txt").write_text("\n".join(lines) + "\n")

    async def finish(self, result: ScenarioResult) -> list[Sample]:
        """Stop the load, count stored points, read the access log, fill the table's numbers."""
        self.write_timeline()
        await self.load.join()
        found = await self.cluster.stored_timestamps()
        assert self.cluster.proxy is not None
        access = access_log(self.cluster.proxy.log_text())
        result.fill(self.load.samples, found, access)
        return self.load.samples


@contextlib.asynccontextmanager
async def session(
    opts: Options,
    result: ScenarioResult,
    *,
    proxy_env: Mapping[str, str] | None = None,
    sync_secs: float = 1.0,
    **load_args: Any,
) -> AsyncIterator[Session]:
    """Start a cluster and the load; always stop both, whatever happens inside."""
    cluster = Cluster(
        opts.workdir / result.name, proxy_env=proxy_env, sync_secs=sync_secs, proxy_argv=opts.proxy_argv
    )
    result.workdir = str(cluster.workdir)
    load: Load | None = None
    try:
        await asyncio.to_thread(cluster.start)
        assert cluster.proxy is not None
        load = Load(cluster.proxy.url, clients=opts.clients, max_secs=opts.duration + 600, **load_args)
        load.start()
        yield Session(cluster, load, opts)
    finally:
        if load is not None:
            await load.join(timeout=5)
        await cluster.aclose()
        await asyncio.to_thread(cluster.stop)


def check_no_failures(result: ScenarioResult) -> None:
    detail = "none" if not result.failures else ", ".join(f"{k}: {v}" for k, v in result.failures.items())
    result.check("zero client-visible failures", not result.failures, detail)


def check_writes_found(result: ScenarioResult) -> None:
    result.check(
        "every acknowledged point is stored on a node",
        result.points_found == result.points_acked and result.points_acked > 0,
        f"{result.points_found} of {result.points_acked} acknowledged points found",
    )


def served_by(samples: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in samples:
        if sample.ok and sample.node:
            counts[sample.node] = counts.get(sample.node, 0) + 1
    return dict(sorted(counts.items()))


@dataclass(slots=True)
class _Stream:
    start: float
    end: float = 0.0
    expected: int = 0
    received: int = 0
    intact: bool = False
    status: int | None = None
    error: str | None = None


async def _one_stream(url: str, size: int, chunk: int, delay: float) -> _Stream:
    record = _Stream(time.monotonic(), expected=size)
    params = {"bytes": str(size), "chunk": str(chunk), "delay": str(delay)}
    try:
        async with (
            httpx.AsyncClient(timeout=CLIENT_TIMEOUT_SECS, trust_env=False) as http,
            http.stream("GET", f"{url}/_sim/stream", params=params) as response,
        ):
            record.status = response.status_code
            intact = True
            async for piece in response.aiter_raw():
                if piece != stream_chunk(record.received, len(piece)):
                    intact = False
                record.received += len(piece)
            record.intact = intact and record.received == size
    except httpx.HTTPError as exc:
        record.error = type(exc).__name__
    record.end = time.monotonic()
    return record


# --------------------------------------------------------------------------- 1. rolling restart


async def _wait_node_ready(cluster: Cluster, ip: str, timeout: float) -> None:
    """Until the node's own /health says 200 (what a readiness probe waits for)."""
    node = cluster.nodes[ip]
    for _ in range(int(timeout / 0.05) + 2):
        with contextlib.suppress(httpx.HTTPError):
            if (await cluster.admin.get(f"{node.url}/health")).status_code == 200:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{ip} not ready within {timeout}s")


async def rolling_restart(opts: Options) -> ScenarioResult:
    """Drain, stop, restart (Syncing -> Active) one node at a time, as a StatefulSet rolls.

    Every other node restart also does what a headless Service without
    ``publishNotReadyAddresses`` does: the pod's record leaves DNS while the
    pod is not ready and comes back once it is.
    """
    result = ScenarioResult("rolling-restart", "rolling restart, one node at a time (drain, SIGTERM, sync)")
    async with session(opts, result, sync_secs=1.5) as run:
        cluster = run.cluster
        name = f"{SERVICE}."
        await asyncio.sleep(opts.warmup)
        rounds = 0
        restarted = 0
        unpublished = 0
        round_secs = 0.0
        for round_index in range(MAX_ROUNDS):
            started = time.monotonic()
            for index, ip in enumerate(cluster.node_ips):
                node = cluster.nodes[ip]
                unpublish = (index + round_index) % 2 == 1
                run.mark(f"drain {ip}")
                await cluster.set_state(ip, "draining")
                await cluster.wait_health(ip, "draining", 5)
                if unpublish:
                    others = [other for other in cluster.node_ips if other != ip]
                    await asyncio.to_thread(cluster.dns.set_records, name, others)
                await asyncio.sleep(2 * run.health_interval)
                run.mark(f"SIGTERM {ip}")
                await asyncio.to_thread(node.stop, 5.0)
                run.mark(f"start {ip} (syncing)")
                await asyncio.to_thread(cluster.restart_node, ip)
                if unpublish:
                    await _wait_node_ready(cluster, ip, 15)
                    await asyncio.to_thread(cluster.dns.set_records, name, cluster.node_ips)
                    unpublished += 1
                await cluster.wait_health(ip, "active", 15)
                run.mark(f"{ip} active")
                restarted += 1
            rounds += 1
            round_secs = time.monotonic() - started
            if run.time_left() < round_secs + 1:
                break
        await run.until_deadline()
        await run.finish(result)
        result.notes.append(
            f"{rounds} rolling restart(s), {restarted} node restarts ({unpublished} with the record "
            f"out of DNS while not ready), {round_secs:.1f}s per round"
        )
        result.notes.append(f"served by: {served_by(run.load.samples)}")
        check_no_failures(result)
        check_writes_found(result)
        result.check("every node was restarted", restarted >= len(cluster.node_ips), f"{restarted} restarts")
    return result


# --------------------------------------------------------------------------- 2. crash


async def _stream_requests(cluster: Cluster) -> dict[str, int]:
    counts = {}
    for ip, node in cluster.nodes.items():
        if node.running:
            paths = (await cluster.node_control(ip, "GET", "requests"))["paths"]
            counts[ip] = int(paths.get("/_sim/stream", 0))
    return counts


async def crash(opts: Options) -> ScenarioResult:
    """SIGKILL a node with requests in flight on it; restart it later on the same data dir.

    Besides the steady load, each kill lands on two kinds of in-flight work:
    writes and queries the victim has received and not yet answered (it
    stalls them for a moment first: a node in trouble), and queries whose
    ``200`` headers it has already sent but no body byte yet -- what InfluxDB
    1.x does on ``/query``: it flushes the headers, then runs the query.
    ``/_sim/stream?delay=`` has exactly that timing.
    """
    result = ScenarioResult("crash", "node SIGKILLed mid-load, restarted later")
    async with session(opts, result, sync_secs=1.0) as run:
        cluster = run.cluster
        assert cluster.proxy is not None
        await asyncio.sleep(opts.warmup)
        kills = 0
        inflight_at_kill: list[int] = []
        headers_only: list[int] = []
        streams: list[asyncio.Task[_Stream]] = []
        down_secs = 2.0 if opts.short else 4.0
        for index in range(MAX_ROUNDS):
            preferred = cluster.node_ips[(index + 1) % len(cluster.node_ips)]
            started = time.monotonic()
            before = await _stream_requests(cluster)
            streams += [
                asyncio.create_task(_one_stream(cluster.proxy.url, 2048, 2048, 1.5))
                for _ in range(len(cluster.nodes) * 2)
            ]
            await asyncio.sleep(0.15)
            after = await _stream_requests(cluster)
            got = {ip: after.get(ip, 0) - before.get(ip, 0) for ip in after}
            ip = preferred if got.get(preferred) else max(got, key=lambda k: got[k])
            headers_only.append(got.get(ip, 0))
            await cluster.node_control(
                ip, "POST", "delay", {"secs": 30, "count": None, "paths": ["/write", "/query"]}
            )
            await asyncio.sleep(0.3)
            inflight_at_kill.append(int((await cluster.backends())[ip]["inflight"]))
            run.mark(f"SIGKILL {ip}")
            await asyncio.to_thread(cluster.nodes[ip].kill)
            kills += 1
            await asyncio.sleep(down_secs)
            run.mark(f"restart {ip}")
            await asyncio.to_thread(cluster.restart_node, ip)
            await cluster.wait_health(ip, "active", 15)
            run.mark(f"{ip} active")
            await asyncio.sleep(1.0)
            if run.time_left() < time.monotonic() - started + 1:
                break
        await run.until_deadline()
        stream_results = await asyncio.gather(*streams)
        samples = await run.finish(result)
        _add_streams(result, stream_results)
        access = access_log(cluster.proxy.log_text())
        retried = sum(1 for a in access if a.attempts > 1)
        result.notes.append(
            f"{kills} kill(s); requests in flight on the victim at each kill: {inflight_at_kill}, of which "
            f"headers-sent-no-body queries: {headers_only}; {retried} requests needed more than one attempt"
        )
        result.notes.append(f"served by: {served_by(samples)}")
        check_no_failures(result)
        result.check(
            "in-flight queries complete untruncated",
            all(s.status == 200 and s.intact for s in stream_results),
            f"{sum(s.intact for s in stream_results)} of {len(stream_results)} intact",
        )
        check_writes_found(result)
        result.check(
            "the kills hit requests in flight",
            sum(inflight_at_kill) > 0 and sum(headers_only) > 0,
            f"{sum(inflight_at_kill)} requests in flight on killed nodes",
        )
    return result


def _add_streams(result: ScenarioResult, streams: list[_Stream]) -> None:
    """Count side streams as requests of the table (their failures too)."""
    result.requests += len(streams)
    for s in streams:
        if s.error is not None or s.status != 200:
            result.failures[s.error or str(s.status)] += 1
        elif not s.intact:
            result.failures["truncated"] += 1
        result.max_ms = max(result.max_ms, (s.end - s.start) * 1000)


# --------------------------------------------------------------------------- 3. hang


async def _data_requests(cluster: Cluster, ip: str) -> int:
    paths = (await cluster.node_control(ip, "GET", "requests"))["paths"]
    return int(paths.get("/write", 0)) + int(paths.get("/query", 0))


async def hang(opts: Options) -> ScenarioResult:
    """A node accepts connections but never answers: Down within a probe, only its stalled requests fail."""
    result = ScenarioResult("hang", "node hangs (accepts, never answers)")
    request_timeout = 2.0
    env = {"HYPERBYTEDB_PROXY_REQUEST_TIMEOUT_SECS": str(request_timeout)}
    async with session(opts, result, proxy_env=env) as run:
        cluster = run.cluster
        await asyncio.sleep(opts.warmup)
        limit = run.health_interval + run.probe_timeout + 0.5  # next probe starts, then times out
        hung_secs = request_timeout + 1.5  # every stalled request reaches its timeout while hung
        episodes: list[dict[str, Any]] = []
        for index in range(MAX_ROUNDS):
            ip = cluster.node_ips[(index + 1) % len(cluster.node_ips)]
            started = time.monotonic()
            before = await _data_requests(cluster, ip)
            t_hang = run.mark(f"hang {ip}")
            await cluster.set_state(ip, "hang")
            inflight = 0
            detected: float | None = None
            for _ in range(int(5 / 0.02)):  # poll the admin view closely: when is it Down?
                view = (await cluster.backends()).get(ip, {})
                if view.get("health") == "down":
                    detected = time.monotonic() - t_hang
                    inflight = int(view.get("inflight", 0))
                    break
                if time.monotonic() - t_hang > 5:
                    break
                await asyncio.sleep(0.02)
            run.mark(f"{ip} down")
            await asyncio.sleep(0.2)  # anything picked just before Down has arrived by now
            at_down = await _data_requests(cluster, ip)
            await asyncio.sleep(max(0.0, t_hang + hung_secs - time.monotonic()))
            at_end = await _data_requests(cluster, ip)
            run.mark(f"unhang {ip}")
            await cluster.set_state(ip, "active")
            await cluster.wait_health(ip, "active", 10)
            episodes.append(
                {
                    "ip": ip,
                    "t_hang": t_hang,
                    "detected": detected,
                    "inflight_at_down": inflight,
                    "stalled": at_down - before,
                    "after_down": at_end - at_down,
                }
            )
            if run.time_left() < time.monotonic() - started + 1:
                break
        await run.until_deadline()
        samples = await run.finish(result)
        access = access_log(cluster.proxy.log_text()) if cluster.proxy else []
        failed = [s for s in samples if not s.ok]
        stalled = sum(e["stalled"] for e in episodes)
        inflight_total = sum(e["inflight_at_down"] for e in episodes)
        for e in episodes:
            detection = "never" if e["detected"] is None else f"{e['detected']:.2f}s"
            result.notes.append(
                f"{e['ip']}: Down after {detection}, "
                f"{e['inflight_at_down']} in flight on it then, {e['stalled']} data requests reached it "
                f"after it hung, {e['after_down']} after Down"
            )
        result.check(
            "marked Down within one probe interval + probe timeout",
            all(e["detected"] is not None and e["detected"] <= limit for e in episodes),
            f"detection {[None if e['detected'] is None else round(e['detected'], 2) for e in episodes]}s, "
            f"limit {limit:.2f}s",
        )
        result.check(
            "no new request reaches a node once it is Down",
            all(e["after_down"] == 0 for e in episodes),
            f"data requests after Down: {[e['after_down'] for e in episodes]}",
        )
        result.check(
            "failures are 504s after REQUEST_TIMEOUT",
            all(s.status == 504 and s.latency >= request_timeout * 0.95 for s in failed),
            f"{dict(result.failures)}",
        )
        hung_ips = {f"{e['ip']}:{cluster.port}" for e in episodes}
        bad_504 = [a for a in access if a.status == 504 and a.backend not in hung_ips]
        result.check("every 504 came from a hung node", not bad_504, f"{len(bad_504)} from elsewhere")
        result.check(
            "failures bounded by the requests in flight to the hung node",
            len(failed) <= max(stalled, inflight_total),
            f"{len(failed)} failed <= {inflight_total} in flight at Down "
            f"({stalled} reached it after it hung)",
        )
        check_writes_found(result)
    return result


# --------------------------------------------------------------------------- 4. short full outage


async def _stop_all_nodes(cluster: Cluster, *, kill: bool = False) -> None:
    """SIGTERM every node (graceful: in-flight requests finish), or SIGKILL them (a power cut)."""
    nodes = list(cluster.nodes.values())
    await asyncio.gather(*(asyncio.to_thread(node.kill if kill else node.stop) for node in nodes))


async def _restart_all_nodes(cluster: Cluster, sync_secs: float) -> None:
    await asyncio.gather(
        *(asyncio.to_thread(cluster.restart_node, ip, sync_secs=sync_secs) for ip in cluster.node_ips)
    )


async def short_outage(opts: Options) -> ScenarioResult:
    """Every node stops for less than the hold: requests wait, then are served.

    Outages alternate between SIGTERM (a full restart) and SIGKILL (a power
    cut, with requests in flight); the short form runs one of each.
    """
    result = ScenarioResult("short-outage", "all nodes down for less than HOLD_TIMEOUT_SECS")
    outage = 3.0
    async with session(opts, result) as run:
        cluster = run.cluster
        hold = env_secs(cluster.proxy_env, "HOLD_TIMEOUT_SECS")
        await asyncio.sleep(opts.warmup)
        windows: list[tuple[float, float]] = []
        inflight_at_kill: list[int] = []
        for index in range(MAX_ROUNDS):
            kill = index % 2 == 1
            if kill:  # requests in flight at the power cut: every node stalls them first
                stall = {"secs": 30, "count": None, "paths": ["/write", "/query"]}
                await asyncio.gather(
                    *(cluster.node_control(ip, "POST", "delay", stall) for ip in cluster.node_ips)
                )
                await asyncio.sleep(0.3)
                inflight_at_kill.append(sum(int(b["inflight"]) for b in (await cluster.backends()).values()))
            started = run.mark(f"{'SIGKILL' if kill else 'SIGTERM'} all nodes")
            await _stop_all_nodes(cluster, kill=kill)
            await asyncio.sleep(outage)
            run.mark("restart all nodes")
            await _restart_all_nodes(cluster, sync_secs=0.5)
            await asyncio.gather(*(cluster.wait_health(ip, "active", 15) for ip in cluster.node_ips))
            windows.append((started, run.mark("all active")))
            await asyncio.sleep(2.0)
            if run.time_left() < time.monotonic() - started + 1 and index >= 1:
                break
        await run.until_deadline()
        samples = await run.finish(result)
        longest = [
            max((s.latency for s in samples if s.start < end and s.end > begin), default=0.0)
            for begin, end in windows
        ]
        result.notes.append(
            f"{len(windows)} outage(s) of {[round(e - b, 1) for b, e in windows]}s (stop -> all Active); "
            f"longest request in each: {[round(x, 2) for x in longest]}s; hold limit {hold:g}s; "
            f"requests in flight at each SIGKILL of all nodes: {inflight_at_kill}"
        )
        check_no_failures(result)
        result.check(
            "requests were held, then served", result.hold_ms > 0, f"longest hold {result.hold_ms:.0f} ms"
        )
        result.check(
            "outages were shorter than the hold",
            all(e - b < hold for b, e in windows),
            f"{[round(e - b, 1) for b, e in windows]}s < {hold:g}s",
        )
        check_writes_found(result)
    return result


# --------------------------------------------------------------------------- 5. long full outage


async def long_outage(opts: Options) -> ScenarioResult:
    """Every node stops for longer than the hold: 503 JSON after the hold, readyz 503, full recovery.

    As a headless Service does when no pod is ready, the name answers NXDOMAIN
    during the outage; the records return as the pods turn ready again.
    """
    result = ScenarioResult("long-outage", "all nodes down for longer than the hold (2 s)")
    hold = 2.0
    outage = 5.0 if opts.short else 10.0
    env = {"HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS": str(hold)}
    async with session(opts, result, proxy_env=env) as run:
        cluster = run.cluster
        assert cluster.proxy is not None
        pid = cluster.proxy.pid
        await asyncio.sleep(opts.warmup)
        t_stop = run.mark("stop all nodes")
        await _stop_all_nodes(cluster)
        await asyncio.to_thread(cluster.dns.remove, f"{SERVICE}.")
        readyz: list[tuple[float, int | str]] = []
        settle = run.health_interval + run.probe_timeout + 0.5
        for _ in range(int(outage / 0.25) + 2):  # sample readiness through the outage
            if time.monotonic() - t_stop >= outage:
                break
            readyz.append((time.monotonic() - t_stop, await cluster.readyz()))
            await asyncio.sleep(0.25)
        t_back = run.mark("restart all nodes")
        await _restart_all_nodes(cluster, sync_secs=0.5)

        async def republish() -> None:
            await asyncio.gather(*(_wait_node_ready(cluster, ip, 15) for ip in cluster.node_ips))
            await asyncio.to_thread(cluster.dns.set_records, f"{SERVICE}.", cluster.node_ips)

        republished = asyncio.create_task(republish())
        t_ready: float | None = None
        for _ in range(int(15 / 0.05)):
            if await cluster.readyz() == 200:
                t_ready = run.mark("readyz 200")
                break
            if time.monotonic() - t_back > 15:
                break
            await asyncio.sleep(0.05)
        await republished
        await run.until_deadline(at_least=3.0)
        samples = await run.finish(result)
        failed = [s for s in samples if not s.ok]
        during = [code for at, code in readyz if at >= settle]
        result.check(
            "failures are 503s",
            bool(failed) and set(result.failures) == {"503"},
            f"{dict(result.failures)}",
        )
        bad_bodies = [s for s in failed if not _json_error(s.body)]
        result.check('every 503 has a JSON {"error": ...} body', not bad_bodies, f"{len(bad_bodies)} without")
        early = [s for s in failed if s.latency < hold * 0.95]
        result.check(
            "503 only after the hold",
            not early,
            f"shortest failed request {min((s.latency for s in failed), default=0):.2f}s, hold {hold:g}s",
        )
        result.check(
            "/readyz 503 during the outage",
            bool(during) and all(code == 503 for code in during),
            f"{len(during)} samples: {sorted(set(map(str, during)))}",
        )
        result.check(
            "/readyz 200 again once nodes return",
            t_ready is not None,
            "never" if t_ready is None else f"{t_ready - t_back:.2f}s after the restart began",
        )
        after = [s for s in samples if t_ready is not None and s.start >= t_ready]
        result.check(
            "every request after recovery succeeds",
            bool(after) and all(s.ok for s in after),
            f"{sum(s.ok for s in after)} of {len(after)} ok",
        )
        result.check(
            "the proxy was not restarted",
            cluster.proxy.running and cluster.proxy.pid == pid,
            f"pid {pid} -> {cluster.proxy.pid}",
        )
        result.notes.append(
            f"outage {outage:g}s, hold {hold:g}s; {len(failed)} requests answered 503 after the hold"
        )
        check_writes_found(result)
    return result


def _json_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), str)


# --------------------------------------------------------------------------- 6. pod replacement


async def pod_replacement(opts: Options) -> ScenarioResult:
    """A pod moves: the new IP joins DNS once ready, the old one drains, leaves DNS and stops."""
    result = ScenarioResult("pod-replacement", f"pod replaced: 127.0.0.4 leaves DNS, {SPARE_IP} joins")
    async with session(opts, result) as run:
        cluster = run.cluster
        old = cluster.node_ips[-1]
        name = f"{SERVICE}."
        await asyncio.sleep(opts.warmup)
        # 1. The replacement pod starts (Syncing), becomes ready, and only then is published.
        run.mark(f"start {SPARE_IP} (syncing)")
        new = await asyncio.to_thread(cluster.new_node, SPARE_IP, state="syncing", sync_secs=1.5)
        await asyncio.to_thread(new.wait_ready, 15)
        for _ in range(int(15 / 0.05)):
            if (await cluster.admin.get(f"{new.url}/health")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        run.mark(f"publish {SPARE_IP}")
        await asyncio.to_thread(cluster.dns.set_records, name, [*cluster.node_ips, SPARE_IP])
        await cluster.wait_health(SPARE_IP, "active", 10)
        await asyncio.sleep(min(2.0, max(0.5, run.time_left() / 3)))
        # 2. The old pod terminates: the database drains on SIGTERM while its record leaves DNS.
        run.mark(f"terminate {old}: drain + unpublish")
        await cluster.set_state(old, "draining")
        remaining = [ip for ip in cluster.node_ips if ip != old]
        await asyncio.to_thread(cluster.dns.set_records, name, [*remaining, SPARE_IP])
        gone_after = await cluster.wait_health(old, None, 10)
        await asyncio.sleep(1.0)  # rest of the pod's drain period
        run.mark(f"stop {old}")
        await asyncio.to_thread(cluster.nodes[old].stop, 5.0)
        await run.until_deadline(at_least=2.0)
        final = await cluster.backends()
        samples = await run.finish(result)
        served = served_by(samples)
        new_name = f"node-{SPARE_IP.rsplit('.', 1)[1]}"
        result.notes.append(
            f"{old} left the proxy's pool {gone_after:.2f}s after leaving DNS; served by: {served}"
        )
        check_no_failures(result)
        check_writes_found(result)
        want = {*remaining, SPARE_IP}
        result.check(
            "the pool follows DNS",
            set(final) == want and all(b["health"] == "active" for b in final.values()),
            f"{ {ip: b['health'] for ip, b in final.items()} }",
        )
        result.check(
            "the new pod serves traffic", served.get(new_name, 0) > 0, f"{served.get(new_name, 0)} requests"
        )
    return result


# --------------------------------------------------------------------------- 7. proxy SIGTERM


async def proxy_sigterm(opts: Options) -> ScenarioResult:
    """SIGTERM with streams and slow writes in flight: all complete, exit 0, new connections refused."""
    result = ScenarioResult("proxy-sigterm", "proxy SIGTERM with streams and writes in flight")
    grace = 10.0
    env = {"HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS": str(grace)}
    stream_bytes, stream_chunk_size, stream_delay = 4_000_000, 64 * 1024, 0.05  # 62 chunks: ~3.1 s
    async with session(opts, result, proxy_env=env) as run:
        cluster = run.cluster
        proxy = cluster.proxy
        assert proxy is not None
        # Steady load first; the fault is at the end, since the proxy does not come back.
        await asyncio.sleep(max(opts.warmup, opts.duration - 2.5))
        for ip in cluster.node_ips:  # slow writes, so many are in flight at the signal
            await cluster.node_control(ip, "POST", "delay", {"secs": 1.0, "count": None, "paths": ["/write"]})
        streams = [
            asyncio.create_task(_one_stream(proxy.url, stream_bytes, stream_chunk_size, stream_delay))
            for _ in range(4)
        ]
        await asyncio.sleep(1.2)  # streams are a third of the way through; writes are in flight
        # The clients send nothing new from here on.  The gap lets every request already
        # written reach the proxy: one still on the wire when the listener closes would
        # meet the keep-alive close race, which no server can win for its clients.
        run.load.stop()
        await asyncio.sleep(0.4)
        t_term = run.mark("SIGTERM proxy")
        run.write_timeline()
        proxy.terminate()
        refused_after: float | None = None
        for _ in range(int(3 / 0.05)):  # when does the listener refuse new connections?
            if await asyncio.to_thread(_connect_refused, proxy.host, proxy.port):
                refused_after = time.monotonic() - t_term
                break
            if time.monotonic() - t_term > 3:
                break
            await asyncio.sleep(0.05)
        refused_http = await _fresh_request(proxy.url)
        stream_results = await asyncio.gather(*streams)
        code = await asyncio.to_thread(proxy.wait_exit, grace + 5)
        exit_secs = time.monotonic() - t_term
        await run.load.join()
        samples = run.load.samples
        found = await cluster.stored_timestamps()
        result.fill(samples, found, access_log(proxy.log_text()))
        inflight = [s for s in samples if s.start < t_term < s.end]
        inflight_writes = sum(1 for s in inflight if s.kind == "write")
        inflight_streams = [s for s in stream_results if s.start < t_term < s.end]
        _add_streams(result, stream_results)
        result.notes.append(
            f"at SIGTERM: {len(inflight_streams)} streams of {stream_bytes} bytes and "
            f"{inflight_writes} writes (+{len(inflight) - inflight_writes} queries) in flight; "
            f"exit code {code} after {exit_secs:.2f}s (grace {grace:g}s)"
        )
        check_no_failures(result)
        result.check(
            "requests were in flight at SIGTERM",
            len(inflight_streams) == len(stream_results) and inflight_writes > 0,
            f"{len(inflight_streams)} streams, {inflight_writes} writes",
        )
        result.check(
            "every in-flight response completed untruncated",
            all(s.ok for s in inflight)
            and all(s.intact and s.received == s.expected for s in stream_results),
            ", ".join(f"{s.received}/{s.expected}{'' if s.intact else ' CORRUPT'}" for s in stream_results),
        )
        result.check("exit code 0", code == 0, f"exit code {code}")
        result.check(
            "exit within the grace",
            code is not None and exit_secs <= grace,
            f"{exit_secs:.2f}s <= {grace:g}s",
        )
        result.check(
            "new connections after SIGTERM are refused",
            refused_after is not None and refused_after <= 1.0 and refused_http == "ConnectError",
            f"TCP connect refused {'never' if refused_after is None else f'{refused_after:.2f}s'} "
            "after SIGTERM; "
            f"then a new HTTP client got {refused_http}",
        )
        check_writes_found(result)
    return result


async def _fresh_request(url: str) -> str:
    """What a client opening a new connection now gets."""
    try:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as fresh:
            response = await fresh.get(f"{url}/healthz")
        return f"answered {response.status_code}"
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _connect_refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


SCENARIOS: dict[str, Scenario] = {
    "rolling-restart": rolling_restart,
    "crash": crash,
    "hang": hang,
    "short-outage": short_outage,
    "long-outage": long_outage,
    "pod-replacement": pod_replacement,
    "proxy-sigterm": proxy_sigterm,
}
