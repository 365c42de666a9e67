"""``python -m chaos``: run the fault scenarios, print the table, exit 1 if any failed.

python -m chaos                      # full: every scenario, 60 s of load each
python -m chaos --short              # the CI form: every scenario, ~6 s of load each
python -m chaos --scenario hang      # one scenario (repeatable)
python -m chaos --scenario gray-experiment   # the gray-node experiment: 600 queries, one node 502s
python -m chaos --duration 120       # seconds of load per scenario
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from chaos.influx import real_server
from chaos.outliers import OUTLIER_SCENARIOS
from chaos.report import ScenarioResult, table
from chaos.scenarios import SCENARIOS, Options, Scenario
from sim.processes import REPO_ROOT

FULL_DURATION = 60.0
SHORT_DURATION = 6.0
# Setup, fault sequences longer than the load duration, counting and teardown.
SCENARIO_OVERHEAD_SECS = 240.0

ALL: dict[str, Scenario] = {**SCENARIOS, **OUTLIER_SCENARIOS, "real-influxdb": real_server}
# A first guess at one scenario's setup and teardown, before any has run.
ESTIMATED_OVERHEAD_SECS = 15.0


async def run_scenario(name: str, opts: Options) -> ScenarioResult:
    """One scenario, bounded in time; a harness error becomes a failed result, never a crash."""
    started = time.monotonic()
    limit = opts.duration * 2 + SCENARIO_OVERHEAD_SECS
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            result = await ALL[name](opts)
    except Exception as exc:
        if isinstance(exc, TimeoutError) and scope.expired():
            result = ScenarioResult(name, "timed out", error=f"scenario exceeded {limit:g}s")
        else:
            traceback.print_exc()
            result = ScenarioResult(name, "harness error", error=f"{type(exc).__name__}: {exc}")
        result.workdir = str(opts.workdir / name)
    result.notes.append(f"scenario took {time.monotonic() - started:.1f}s")
    return result


async def run_all(names: Sequence[str], opts: Options) -> list[ScenarioResult]:
    # SIGTERM cancels like Ctrl-C does, so every scenario's finally block stops its processes.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    results = []
    started = time.monotonic()
    for index, name in enumerate(names):  # one at a time: two cores, and they share loopback addresses
        print(progress_line(index, names, time.monotonic() - started, opts.duration), flush=True)
        result = await run_scenario(name, opts)
        print(result.summary(), flush=True)
        results.append(result)
    return results


def progress_line(index: int, names: Sequence[str], elapsed: float, duration: float) -> str:
    """What runs now and roughly how long is left, from the pace so far (or a first guess)."""
    per_scenario = elapsed / index if index else duration + ESTIMATED_OVERHEAD_SECS
    left = per_scenario * (len(names) - index)
    return (
        f"== [{index + 1}/{len(names)}] {names[index]} ... "
        f"elapsed {_minutes(elapsed)}, about {_minutes(left)} left"
    )


def _minutes(secs: float) -> str:
    minutes, seconds = divmod(round(secs), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _revision() -> str:
    """The commit of the proxy under test, marked when app/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "revision unknown"
    return f"commit {head or '?'}{' + uncommitted app/ changes' if dirty else ''}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--short", action="store_true", help=f"CI form: {SHORT_DURATION:g}s of load per scenario"
    )
    parser.add_argument(
        "--scenario", action="append", choices=list(ALL), help="run only this one (repeatable)"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds of load per scenario")
    parser.add_argument("--clients", type=int, default=12, help="concurrent load clients (default 12)")
    parser.add_argument(
        "--proxy-cmd",
        default=None,
        help="command that starts the proxy (default: python -m app), e.g. the installed hyperbytedb-proxy",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and data here")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(ALL))
        return 0
    duration = (
        args.duration if args.duration is not None else (SHORT_DURATION if args.short else FULL_DURATION)
    )
    if not 1 <= duration <= 3600 or not 1 <= args.clients <= 64:
        print("--duration must be 1-3600 s and --clients 1-64", file=sys.stderr)
        return 2
    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="chaos-")) if owned else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    proxy_argv = tuple(shlex.split(args.proxy_cmd)) if args.proxy_cmd else None
    opts = Options(
        short=args.short, duration=duration, workdir=workdir, clients=args.clients, proxy_argv=proxy_argv
    )
    names = args.scenario or list(ALL)
    proxy = " ".join(proxy_argv) if proxy_argv else "python -m app"
    print(f"proxy: {proxy} ({_revision()}); load {duration:g}s per scenario", flush=True)
    started = time.monotonic()
    try:
        results = asyncio.run(run_all(names, opts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"interrupted; every process was stopped; logs: {workdir}", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    print()
    print(table(results))
    ok = all(r.ok or r.skipped is not None for r in results)
    verdict = "all scenarios passed" if ok else "SOME SCENARIOS FAILED"
    if ok and owned:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\n{verdict} in {elapsed:.0f}s")
    else:
        print(f"\n{verdict} in {elapsed:.0f}s; logs: {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
