"""Scenarios of partial failure: one sick node must cost clients nothing.

A "gray" node passes its probe while real requests fail; a slow node keeps
answering, a hundred times slower; a node dies with many slow queries in
flight.  Outlier detection, the believed drain answer, the retry budget and
least-request routing are what keep these invisible to clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import httpx

from chaos.harness import DB, MEASUREMENT, Cluster, access_log, env_secs
from chaos.report import ScenarioResult
from chaos.scenarios import Options, check_no_failures, check_writes_found, served_by, session

SICK = "127.0.0.2"
SICK_NODE = "node-2"  # its X-Sim-Node
DEFAULT_BUDGET_PERCENT = 0.2
DEFAULT_BUDGET_WINDOW_SECS = 10.0
WAIT_SECS = 20.0

# The proxy's own defaults for everything the base chaos environment shortens.
DEFAULT_PROXY_ENV = {
    "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "2",
    "HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS": "1500",
    "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "5",
    "HYPERBYTEDB_PROXY_CONNECT_TIMEOUT_MS": "1000",
    "HYPERBYTEDB_PROXY_REQUEST_TIMEOUT_SECS": "60",
}


async def _data_requests(cluster: Cluster, ip: str, path: str) -> int:
    paths = (await cluster.node_control(ip, "GET", "requests"))["paths"]
    return int(paths.get(path, 0))


async def _ejection(cluster: Cluster, ip: str) -> dict[str, Any] | None:
    return (await cluster.backends())[ip].get("ejection")


async def _wait_ejected(cluster: Cluster, ip: str, timeout: float = WAIT_SECS) -> dict[str, Any] | None:
    """The proxy's ejection record of ``ip`` once it has one (None if it never came)."""
    for _ in range(int(timeout / 0.05) + 2):
        ejection = await _ejection(cluster, ip)
        if ejection is not None:
            return ejection
        await asyncio.sleep(0.05)
    return None


async def _gray(
    opts: Options, name: str, title: str, rule: dict[str, Any], path: str, **load_args: Any
) -> ScenarioResult:
    """One node fails every data request that matches ``rule`` while its /health says 200.

    A success resets a node's streak, so a node failing only queries under
    a write-heavy load takes longer to be ejected; until then each of its
    failures is retried elsewhere within the budget.
    """
    result = ScenarioResult(name, title)
    async with session(opts, result, **load_args) as run:
        cluster = run.cluster
        await asyncio.sleep(opts.warmup)
        started = run.mark(f"{SICK}: {rule}")
        await cluster.node_control(SICK, "POST", "fail", {**rule, "count": None})
        ejection = await _wait_ejected(cluster, SICK)
        ejected_after = time.monotonic() - started
        at_ejection = await _data_requests(cluster, SICK, path)
        # Ejections last 30 s: watch (part of) the first one.
        await asyncio.sleep(max(1.0, min(run.time_left(), 25.0)))
        while_ejected = await _data_requests(cluster, SICK, path) - at_ejection
        await run.until_deadline()
        samples = await run.finish(result)
        result.notes.append(
            f"ejected {ejected_after:.2f}s after the fault: {ejection}; {while_ejected} {path} requests "
            f"reached it while ejected; served by: {served_by(samples)}"
        )
        check_no_failures(result)
        check_writes_found(result)
        result.check(
            "the sick node is ejected with its reason",
            ejection is not None and str(ejection["reason"]).startswith("outlier: 5 consecutive"),
            f"{ejection}",
        )
        result.check(
            f"no new {path} request reaches it while ejected",
            while_ejected <= opts.clients,  # at most those already on their way
            f"{while_ejected}",
        )
    return result


async def gray_502(opts: Options) -> ScenarioResult:
    return await _gray(
        opts,
        "gray-502",
        "a node answers 502 to every query while /health says 200",
        {"status": 502, "body": {"error": "query engine unavailable"}, "paths": ["/query"]},
        "/query",
        write_share=0.3,  # mostly queries: a success in between (a write) resets the streak
    )


async def gray_reset(opts: Options) -> ScenarioResult:
    return await _gray(
        opts,
        "gray-reset",
        "a node resets every request after reading it while /health says 200",
        {"reset": True, "paths": ["/write", "/query"]},
        "/write",
    )


async def drain_writes(opts: Options) -> ScenarioResult:
    """A node answers the draining 503 to every write while /health says 200."""
    result = ScenarioResult("drain-writes", "a node answers writes with the drain 503 while /health says 200")
    rule = {
        "status": 503,
        "paths": ["/write"],
        "headers": {"Retry-After": "5", "X-Hyperbytedb-Redirect": "127.0.0.3:8086"},
        "count": None,
    }
    async with session(opts, result) as run:
        cluster = run.cluster
        interval = run.health_interval
        await asyncio.sleep(opts.warmup)
        before = await _data_requests(cluster, SICK, "/write")
        started = run.mark(f"{SICK}: drain 503 on /write")
        await cluster.node_control(SICK, "POST", "fail", rule)
        await run.until_deadline()
        reached = await _data_requests(cluster, SICK, "/write") - before
        fault_secs = time.monotonic() - started
        samples = await run.finish(result)
        rounds = fault_secs / interval + 1
        result.notes.append(
            f"{reached} writes reached the draining node in {fault_secs:.1f}s "
            f"({reached / rounds:.1f} per probe interval); served by: {served_by(samples)}"
        )
        check_no_failures(result)
        check_writes_found(result)
        # Believed at once: only the requests sent in the moment before its answer came back.
        result.check(
            "a handful of writes per probe interval reach it, not one in three",
            reached <= rounds * opts.clients / 3 + opts.clients,
            f"{reached} in {rounds:.0f} probe intervals, of {result.writes_acked} writes",
        )
    return result


async def slow_node(opts: Options) -> ScenarioResult:
    """With least_request, a node a hundred times slower gets a small share of the queries."""
    result = ScenarioResult("slow-node", "one node turns 100x slower (LB_POLICY=least_request)")
    env = {"HYPERBYTEDB_PROXY_LB_POLICY": "least_request"}
    async with session(opts, result, proxy_env=env) as run:
        cluster = run.cluster
        await asyncio.sleep(opts.warmup)
        quick = [s.latency for s in run.load.samples if s.ok and s.kind == "query"]
        base = sorted(quick)[len(quick) // 2] if quick else 0.002
        delay = max(0.1, base * 100)
        started = run.mark(f"{SICK}: {delay * 1000:.0f} ms delay on every request")
        await cluster.node_control(SICK, "POST", "delay", {"secs": delay, "count": None})
        await run.until_deadline()
        samples = await run.finish(result)
        queries = [s for s in samples if s.kind == "query" and s.ok and s.start >= started]
        share = sum(1 for s in queries if s.node == SICK_NODE) / max(1, len(queries))
        result.notes.append(
            f"median query {base * 1000:.1f} ms before, sick node delayed {delay * 1000:.0f} ms; "
            f"its share of queries {share:.1%} of {len(queries)}; served by: {served_by(samples)}"
        )
        check_no_failures(result)
        check_writes_found(result)
        result.check("the slow node gets under 12% of the queries", share < 0.12, f"{share:.1%}")
    return result


async def kill_slow_queries(opts: Options) -> ScenarioResult:
    """A node dies with 96 slow queries in flight on a quiet proxy: every one is retried elsewhere."""
    result = ScenarioResult("kill-slow-queries", "node killed with 96 slow queries in flight, low rate")
    quiet = dataclasses.replace(opts, clients=2)
    want = 96
    async with session(quiet, result, pause=0.25) as run:
        cluster = run.cluster
        assert cluster.proxy is not None
        await asyncio.sleep(opts.warmup)
        await cluster.node_control(SICK, "POST", "delay", {"secs": 12, "count": None, "paths": ["/query"]})
        limits = httpx.Limits(max_connections=want * 4, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as burst:
            params = {"db": DB, "q": f"SELECT count(seq) FROM {MEASUREMENT}"}
            url = f"{cluster.proxy.url}/query"
            tasks: list[asyncio.Task[httpx.Response | str]] = []
            inflight = 0
            for _ in range(want * 2):  # bounded: round-robin sends a third of them to the sick node
                tasks += [asyncio.create_task(_query(burst, url, params)) for _ in range(24)]
                await asyncio.sleep(0.1)
                inflight = int((await cluster.backends())[SICK]["inflight"])
                if inflight >= want:
                    break
            run.mark(f"SIGKILL {SICK} with {inflight} queries in flight on it")
            await asyncio.to_thread(cluster.nodes[SICK].kill)
            answers = await asyncio.gather(*tasks)
        await run.until_deadline()
        samples = await run.finish(result)
        assert cluster.proxy is not None
        retried = sum(1 for a in access_log(cluster.proxy.log_text()) if a.attempts > 1)
        burst_failed = [a for a in answers if not isinstance(a, httpx.Response) or a.status_code != 200]
        result.requests += len(answers)
        for failed in burst_failed:
            key = failed if isinstance(failed, str) else str(failed.status_code)
            result.failures[key] += 1
        result.notes.append(
            f"{inflight} queries in flight on the killed node; {len(answers)} burst queries, "
            f"{retried} requests retried; served by: {served_by(samples)}"
        )
        result.check(f"at least {want} queries in flight at the kill", inflight >= want, f"{inflight}")
        check_no_failures(result)
        check_writes_found(result)
    return result


async def _query(client: httpx.AsyncClient, url: str, params: dict[str, str]) -> httpx.Response | str:
    try:
        response = await client.get(url, params=params)
        await response.aread()
        return response
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def all_502(opts: Options) -> ScenarioResult:
    """Every node answers 502 for a while, then recovers: bounded attempts, then full service."""
    result = ScenarioResult("all-502", "all nodes answer 502 for a while, then recover")
    fault_secs = 10.0 if opts.short else 30.0
    async with session(opts, result) as run:
        cluster = run.cluster
        interval = run.health_interval
        await asyncio.sleep(opts.warmup)
        rule = {"status": 502, "count": None, "paths": ["/write", "/query"]}
        started = run.mark("every node answers 502")
        await asyncio.gather(*(cluster.node_control(ip, "POST", "fail", rule) for ip in cluster.node_ips))
        await asyncio.sleep(fault_secs)
        await asyncio.gather(*(cluster.node_control(ip, "DELETE", "fail") for ip in cluster.node_ips))
        recovered = run.mark("every node answers again")
        ejected_at_end = [ip for ip, b in (await cluster.backends()).items() if b.get("ejection")]
        await run.until_deadline(at_least=3 * interval)
        samples = await run.finish(result)
        assert cluster.proxy is not None
        access = access_log(cluster.proxy.log_text())
        # The access log's times are wall-clock: map the fault window onto them.
        offset = time.time() - time.monotonic()
        during = [a for a in access if started + offset <= a.start and a.end <= recovered + offset]
        attempts = sum(a.attempts for a in during) / max(1, len(during))
        # The window before the fault lends its 20 % too; a long fault approaches 1.2.
        bound = 1 + DEFAULT_BUDGET_PERCENT * (1 + DEFAULT_BUDGET_WINDOW_SECS / fault_secs) + 0.05
        late = [s for s in samples if s.start >= recovered + interval]
        late_failed = [s for s in late if not s.ok]
        early = [s for s in samples if s.end < started]
        result.notes.append(
            f"{len(during)} requests during the {fault_secs:g}s fault, {attempts:.2f} attempts each "
            f"(bound {bound:.2f}); ejected when it ended: {ejected_at_end}; "
            f"{len(late)} requests from one probe interval after recovery, {len(late_failed)} failed"
        )
        result.check("bounded attempts during the fault", 1 <= attempts <= bound, f"{attempts:.2f}")
        result.check(
            "never more ejected than the cap (one of three)", len(ejected_at_end) <= 1, f"{ejected_at_end}"
        )
        result.check(
            "full service within one probe interval after recovery",
            bool(late) and not late_failed,
            f"{len(late_failed)} of {len(late)} failed",
        )
        result.check("no failure before the fault", all(s.ok for s in early), f"{len(early)} requests")
        check_writes_found(result)
    return result


async def gray_experiment(opts: Options) -> ScenarioResult:
    """The issue's experiment, with the proxy's default settings.

    Three nodes, one answers 502 to every /query while its /health says
    200; 600 queries at about 100 per second.  Reports how many failed and
    how many reached the sick node.
    """
    result = ScenarioResult("gray-experiment", "600 queries at ~100/s, one node 502s every query")
    total, rate = 600, 100.0
    cluster = Cluster(opts.workdir / result.name, proxy_env=DEFAULT_PROXY_ENV, proxy_argv=opts.proxy_argv)
    result.workdir = str(cluster.workdir)
    try:
        wait = WAIT_SECS + env_secs(cluster.proxy_env, "HEALTH_INTERVAL_SECS")
        await asyncio.to_thread(cluster.start, wait_active=wait)
        assert cluster.proxy is not None
        await cluster.node_control(SICK, "POST", "fail", {"status": 502, "count": None, "paths": ["/query"]})
        params = {"db": DB, "q": "SHOW DATABASES"}
        url = f"{cluster.proxy.url}/query"
        limits = httpx.Limits(max_connections=64)
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as client:
            tasks = []
            for index in range(total):
                await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
                tasks.append(asyncio.create_task(_query(client, url, params)))
            answers = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        reached = await _data_requests(cluster, SICK, "/query")
        ejection = await _ejection(cluster, SICK)
        failed = [a for a in answers if not isinstance(a, httpx.Response) or a.status_code != 200]
        result.requests = total
        result.load_secs = elapsed
        for answer in failed:
            result.failures[answer if isinstance(answer, str) else str(answer.status_code)] += 1
        result.notes.append(
            f"{total} queries in {elapsed:.1f}s: {len(failed)} failed, {reached} reached the sick node; "
            f"ejection: {ejection}"
        )
        check_no_failures(result)
        result.check("at most 10 queries reach the sick node", reached <= 10, f"{reached}")
    finally:
        await cluster.aclose()
        await asyncio.to_thread(cluster.stop)
    return result


OUTLIER_SCENARIOS = {
    "gray-502": gray_502,
    "gray-reset": gray_reset,
    "drain-writes": drain_writes,
    "slow-node": slow_node,
    "kill-slow-queries": kill_slow_queries,
    "all-502": all_502,
    "gray-experiment": gray_experiment,
}
