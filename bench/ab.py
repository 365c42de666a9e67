"""``python -m bench.ab``: A/B of changed copies of the proxy, interleaved, medians reported.

Each variant is a directory holding an ``app`` package -- the repository itself
(``.``) or a copy with a change to measure, e.g.::

    mkdir -p /tmp/proto/freeze && cp -r app /tmp/proto/freeze/
    $EDITOR /tmp/proto/freeze/app/__main__.py
    .venv/bin/python -m bench.ab . /tmp/proto/freeze . :LOG_LEVEL=warning

``DIR:VAR=VALUE+VAR=VALUE`` adds environment variables (``:VAR=VALUE`` alone
means the repository's app) to the proxy's defaults (access log on; the
example's last variant turns it off).  The variant ``ceiling`` is the
uvicorn-ceiling row's bare ASGI app (``bench/ceiling.py``), so a ratio to it
comes from the same rounds.  Variants run one after the other in each round,
next to the nginx backend, and the rounds repeat the order, so a slow minute of
a shared machine hits every variant alike.  Reported per variant and
connection count: median req/s, p50, p99 and proxy CPU microseconds per request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import procfs, wrk
from bench.cli import CEILING_ARGV, SCENARIOS, Bench, parse_args, say
from bench.tools import ToolError, ensure
from sim.processes import stop_all

CEILING = "ceiling"


def _variant(spec: str) -> tuple[str, Path, dict[str, str]]:
    if spec == CEILING:
        return spec, Path(CEILING), {}
    where, _, env_text = spec.partition(":")
    tree = Path(where or ".").resolve()
    if not (tree / "app" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{tree} holds no app package")
    env = dict(item.split("=", 1) for item in env_text.split("+") if "=" in item)
    return spec, tree, env


def _argv(tree: Path) -> list[str]:
    if tree == Path(CEILING):
        return list(CEILING_ARGV)
    # The tree goes first on sys.path, ahead of the repository (the child's cwd).
    code = (
        f"import sys; sys.path.insert(0, {str(tree)!r}); import runpy; "
        "runpy.run_module('app', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument(
        "variants", nargs="+", help="DIR[:VAR=VALUE+...] holding an app package, or 'ceiling'"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", default="32,1")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="query")
    args = parser.parse_args(argv)
    try:
        variants = [_variant(spec) for spec in args.variants]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    connections = [int(c) for c in args.connections.split(",")]
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--rounds 1-20, --duration 1-120")
    try:
        tools = ensure(("wrk", "nginx", "curl"), log=say)
    except ToolError as exc:
        print(f"bench.ab: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hyperbytedb-ab-"))
    bench = Bench(parse_args(["--only", args.scenario]), tools, workdir)
    script = bench.write_script if args.scenario == "write" else None
    results: dict[str, list[dict[int, dict[str, Any]]]] = {spec: [] for spec, _, _ in variants}
    try:
        bench.start_backend()
        for round_no in range(args.rounds):
            for spec, tree, env in variants:
                proc = bench.start_ours(argv=_argv(tree), env=env)
                try:
                    url = proc.url + SCENARIOS[args.scenario]
                    wrk.run(tools["wrk"], url, connections=max(connections), duration=2, script=script)
                    runs: dict[int, dict[str, Any]] = {}
                    for conns in connections:
                        before = procfs.tree_cpu_ticks(proc.pid or 0)
                        result, _ = wrk.run(
                            tools["wrk"], url, connections=conns, duration=args.duration, script=script
                        )
                        cpu = procfs.ticks_to_secs(procfs.tree_cpu_ticks(proc.pid or 0) - before)
                        runs[conns] = {
                            "rps": result.rps,
                            "p50": result.p50_ms,
                            "p99": result.p99_ms,
                            "errors": result.errors,
                            "us": cpu / result.requests * 1e6 if result.requests else None,
                        }
                    results[spec].append(runs)
                    say(f"round {round_no + 1} {spec}: {json.dumps(runs)}")
                finally:
                    proc.stop(timeout=10)
    except KeyboardInterrupt:
        return 130
    finally:
        stop_all(bench.processes)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmedians over {args.rounds} rounds, {args.scenario}, wrk -t1 -d{args.duration}s")
    width = max(len(spec) for spec in results)
    for spec, spec_runs in results.items():
        cells = []
        for conns in connections:
            values = [run[conns] for run in spec_runs]

            def median(key: str, values: list[dict[str, Any]] = values) -> float:
                middle: float = statistics.median(v[key] for v in values if v[key] is not None)
                return middle

            ratio = ""
            if CEILING in results and spec != CEILING:
                ceiling = statistics.median(run[conns]["rps"] for run in results[CEILING])
                ratio = f" = {median('rps') / ceiling:.3f} x ceiling"
            cells.append(
                f"{conns:>3}c {median('rps'):>7,.0f} req/s p50 {median('p50'):6.3f} "
                f"p99 {median('p99'):6.2f} ms CPU {median('us'):6.1f} us/req{ratio}"
            )
        print(f"{spec:<{width}}  " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
