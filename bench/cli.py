"""Orchestration of ``python -m bench``: start each target, drive it, stop it, report.

Topology (all loopback, all one port per process):

    wrk -> nginx backend         127.0.0.2:B   fixed /query, /write, /health answers
    wrk -> nginx reverse proxy   127.0.0.3:R   -> 127.0.0.2:B (and 127.0.0.5:S for the stream)
    wrk -> uvicorn ceiling       127.0.0.1:*   the backend's answers from a bare ASGI app
    wrk -> ours                  127.0.0.1:*   -> 127.0.0.2:B (one instance per variant)
    curl -> sim node             127.0.0.5:S   /_sim/stream, the streaming backend

Every row runs its target's defaults unless its label says otherwise: ours
and nginx both with their access log on, next to a row of each with it off.

The nginx backend runs for the whole request phase; every other target runs
alone next to it, one after the other, so the two cores are shared only by
wrk, the backend and the target under test.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import procfs, report, stream, tls, wrk
from bench.nginx import NginxProcess, backend_config, reverse_proxy_config
from bench.progress import Progress
from bench.report import Row, StreamRow
from bench.tools import ToolError, ensure
from sim.processes import REPO_ROOT, ManagedProcess, NodeProcess, ProxyProcess, free_port, stop_all

BACKEND_HOST = "127.0.0.2"
NGINX_HOST = "127.0.0.3"
OURS_HOST = "127.0.0.1"
STREAM_HOST = "127.0.0.5"

SCENARIOS = {"query": "/query?db=bench&q=SELECT+1", "write": "/write?db=bench"}
ALL_PARTS = ("query", "write", "stream", "tls")
FULL_STREAM_BYTES = 1024 * 1024 * 1024
QUICK_STREAM_BYTES = 64 * 1024 * 1024
WARMUP_SECS = 1
CEILING_ARGV = (sys.executable, "-m", "bench.ceiling")  # the bare ASGI app of the ceiling row
PAUSE_SECS = 0.5  # between wrk runs: let the previous run's connections close
STEP_OVERHEAD_SECS = 1.5  # a target's start and warm-up, spread over its runs: for the first estimate
STREAM_STEPS = 4  # the stream rows
IDLE_REQUESTS = 20
READY_TIMEOUT = 30.0
DEFAULT_JSON = REPO_ROOT / ".bench" / "results.json"

Combos = list[tuple[str, int]]  # (scenario, connections) runs of one target


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the proxy against nginx and the bare backend on loopback.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke: 1 s per wrk run, 1 and 32 connections, a 64 MiB stream, no gunicorn",
    )
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10)")
    parser.add_argument("--only", default=",".join(ALL_PARTS), help="comma-separated: query,write,stream,tls")
    parser.add_argument("--connections", default=None, help="comma-separated (default 1,32,256)")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with every process's log")
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=None,
        help="interleaved rounds of ceiling, ours and ours without log judging T7 and T8 (default 3)",
    )
    args = parser.parse_args(argv)
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(args.only) - set(ALL_PARTS)
    if unknown or not args.only:
        parser.error(f"--only takes {', '.join(ALL_PARTS)}; got {args.only}")
    if args.duration is None:
        args.duration = 1 if args.quick else 10
    if args.duration < 1:
        parser.error("--duration must be at least 1 second (wrk counts whole seconds)")
    if args.connections is None:
        args.connections = "1,32" if args.quick else "1,32,256"
    try:
        args.connections = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    except ValueError:
        parser.error("--connections takes comma-separated integers")
    if not args.connections or min(args.connections) < 1 or max(args.connections) > 4096:
        parser.error("--connections must be between 1 and 4096")
    if args.paired_rounds is None:
        args.paired_rounds = 1 if args.quick else 3
    if not 0 <= args.paired_rounds <= 10:
        parser.error("--paired-rounds must be between 0 and 10")
    args.stream_bytes = QUICK_STREAM_BYTES if args.quick else FULL_STREAM_BYTES
    return args


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class Bench:
    """One run: owns the temp dir and every process it starts."""

    def __init__(self, args: argparse.Namespace, tools: dict[str, str], workdir: Path) -> None:
        self.args = args
        self.tools = tools
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[ManagedProcess] = []
        self.scenarios = [s for s in SCENARIOS if s in args.only]
        self.write_script = wrk.write_script(workdir)
        self.backend_port = free_port(BACKEND_HOST)
        self.stream_port = free_port(STREAM_HOST)
        self.rows: list[Row] = []
        self.streams: list[StreamRow] = []
        self.memory: dict[str, int | None] = {"idle RSS": None, "RSS after load": None}
        self.notes: list[str] = []
        self.tls_lines: list[str] = []
        self.paired: report.Paired | None = None
        self.progress: Progress | None = None  # set by main(); other drivers (bench.ab) go without

    # ------------------------------------------------------------ processes

    def _track(self, process: ManagedProcess) -> ManagedProcess:
        self.processes.append(process)
        return process

    def _stop(self, process: ManagedProcess | None) -> None:
        if process is not None:
            process.stop(timeout=10)

    def start_backend(self) -> NginxProcess:
        directory = self.workdir / "nginx-backend"
        config = backend_config(directory, BACKEND_HOST, self.backend_port)
        proc = NginxProcess(
            self.tools["nginx"], directory, config, BACKEND_HOST, self.backend_port, label="backend"
        )
        return self._started(proc)

    def start_nginx_rp(self, *, access_log: bool = False) -> NginxProcess:
        directory = self.workdir / ("nginx-rp-log" if access_log else "nginx-rp")
        port = free_port(NGINX_HOST)
        config = reverse_proxy_config(
            directory,
            NGINX_HOST,
            port,
            (BACKEND_HOST, self.backend_port),
            (STREAM_HOST, self.stream_port),
            access_log=access_log,
        )
        proc = NginxProcess(self.tools["nginx"], directory, config, NGINX_HOST, port, label=f"rp-{port}")
        return self._started(proc)

    def _started(self, proc: NginxProcess) -> NginxProcess:
        self._track(proc).start()
        try:
            return proc.wait_ready()
        except BaseException:
            proc.stop(timeout=10)  # not left running next to the targets that follow
            raise

    def start_ours(
        self,
        *,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        backend: tuple[str, int] | None = None,
        ready_checks: int = 1,
    ) -> ProxyProcess:
        host, port = backend or (BACKEND_HOST, self.backend_port)
        listen_port = free_port(OURS_HOST)
        environment = {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": host,
            "HYPERBYTEDB_PROXY_BACKEND_PORT": str(port),
            "HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS": "2",
            **(env or {}),
        }
        proc = ProxyProcess(environment, listen=f"{OURS_HOST}:{listen_port}", argv=argv, log_dir=self.logs)
        self._track(proc).start()
        try:
            # Under gunicorn each worker probes on its own: ask several times so both are likely ready.
            for _ in range(ready_checks):
                proc.wait_ready(READY_TIMEOUT)
        except BaseException:
            proc.stop(timeout=10)
            raise
        return proc

    # ------------------------------------------------------------ requests

    def measure(
        self,
        target: str,
        base_url: str,
        pid: int,
        *,
        combos: Sequence[tuple[str, int]] | None = None,
        alive: Callable[[], bool] = lambda: True,
    ) -> list[Row]:
        """wrk every (scenario, connections) against ``base_url``; CPU of ``pid``'s process tree."""
        combos = combos or [(s, c) for s in self.scenarios for c in self.args.connections]
        rows: list[Row] = []
        warm = min(32, max(self.args.connections))
        with contextlib.suppress(wrk.WrkError):
            wrk.run(
                self.tools["wrk"],
                base_url + SCENARIOS[combos[0][0]],
                connections=warm,
                duration=WARMUP_SECS,
                script=self.write_script if combos[0][0] == "write" else None,
            )
        for scenario, conns in combos:
            row = Row(target, scenario, conns)
            rows.append(row)
            if not alive():
                row.status, row.note = "failed", "target process exited"
                continue
            if self.progress is not None:
                self.progress.step(f"{target}, {scenario} x{conns}, {self.args.duration} s")
            time.sleep(PAUSE_SECS)
            before = procfs.tree_cpu_ticks(pid)
            try:
                row.wrk, _ = wrk.run(
                    self.tools["wrk"],
                    base_url + SCENARIOS[scenario],
                    connections=conns,
                    duration=self.args.duration,
                    script=self.write_script if scenario == "write" else None,
                )
            except wrk.WrkError as exc:
                row.status, row.note = "failed", str(exc).splitlines()[0][:80]
                say(f"{target} {scenario} x{conns}: {exc}")
                continue
            row.cpu_secs = procfs.ticks_to_secs(procfs.tree_cpu_ticks(pid) - before)
            w = row.wrk
            say(
                f"{target:<28} {scenario:<5} {conns:>4} conns: {w.rps:>9,.0f} req/s  "
                f"p50 {report._num(w.p50_ms, ms=True)} ms  p99 {report._num(w.p99_ms, ms=True)} ms  "
                f"errors {w.errors}"
            )
        self.rows.extend(rows)
        return rows

    def skip(
        self,
        target: str,
        reason: str,
        combos: Sequence[tuple[str, int]] | None = None,
        *,
        status: str = "skipped",
    ) -> None:
        say(f"{target}: {status} ({reason})")
        for scenario, conns in combos or [(s, c) for s in self.scenarios for c in self.args.connections]:
            self.rows.append(Row(target, scenario, conns, status=status, note=reason))

    def targets(self) -> list[tuple[str, Callable[[], NginxProcess | ProxyProcess], Combos | None]]:
        """Every request target after the backend, in order: name, starter, runs (None: all)."""

        def ours() -> ProxyProcess:
            proc = self.start_ours()
            self.memory["idle RSS"] = self._idle_rss(proc)
            return proc

        # The access log's cost is judged at 32 connections, right after the default row.
        at32 = self.judged_conns()
        targets: list[tuple[str, Callable[[], NginxProcess | ProxyProcess], Combos | None]] = [
            (report.NGINX, self.start_nginx_rp, None),
            (report.NGINX_ACCESS_LOG, lambda: self.start_nginx_rp(access_log=True), None),
            (report.CEILING, self.start_ceiling, None),
            (report.OURS, ours, None),
            (report.OURS_LOG_OFF, self.start_ours_log_off, [(scenario, at32) for scenario in self.scenarios]),
            (
                report.OURS_HTTPCORE,
                lambda: self.start_ours(argv=[sys.executable, "-m", "bench.variant"]),
                None,
            ),
        ]
        if self._gunicorn_unavailable() is None:
            targets.append((report.OURS_GUNICORN, self._start_gunicorn, None))
        return targets

    def all_combos(self) -> Combos:
        return [(s, c) for s in self.scenarios for c in self.args.connections]

    def planned_steps(self) -> int:
        steps = 0
        if self.scenarios:
            steps = len(self.all_combos()) * (1 + len(self.targets()))
            steps -= sum(len(self.all_combos()) - len(c) for _, _, c in self.targets() if c is not None)
        if self.paired_conns() is not None:
            steps += self.args.paired_rounds * len(report.PAIRED_TARGETS)
        return steps + (STREAM_STEPS if "stream" in self.args.only else 0)

    def request_phase(self) -> None:
        backend = self.start_backend()
        try:
            say(f"backend nginx on {backend.url}")
            self.measure(report.BACKEND, backend.url, backend.pid or 0, alive=lambda: backend.running)
            for target, start, combos in self.targets():
                after = self._rss_after_load if target == report.OURS else None
                self._run_target(target, start, combos=combos, after=after)
            reason = self._gunicorn_unavailable()
            if reason:
                self.skip(report.OURS_GUNICORN, reason)
                self.notes.append(f"gunicorn variant skipped: {reason}")
            if self.paired_conns() is not None:
                self.paired_phase()
        finally:
            self._stop(backend)

    def judged_conns(self) -> int:
        """Where T7 and T8 are judged: 32 connections when measured, else the most."""
        return 32 if 32 in self.args.connections else max(self.args.connections)

    def paired_conns(self) -> int | None:
        """The connection count of the side-by-side rounds, or None: no rounds."""
        if "query" not in self.scenarios or self.args.paired_rounds < 1:
            return None
        return self.judged_conns()

    def start_ceiling(self) -> ProxyProcess:
        return self.start_ours(argv=CEILING_ARGV)

    def start_ours_log_off(self) -> ProxyProcess:
        return self.start_ours(env={"LOG_LEVEL": "warning"})

    def paired_phase(self) -> None:
        """The ceiling, ours and ours without its log, all running, measured in turns, round after round."""
        conns = self.paired_conns()
        assert conns is not None
        self.paired = paired = report.Paired(conns)
        starters: dict[str, Callable[[], ProxyProcess]] = {
            report.CEILING: self.start_ceiling,
            report.OURS: self.start_ours,
            report.OURS_LOG_OFF: self.start_ours_log_off,
        }
        procs: dict[str, ProxyProcess] = {}
        try:
            for target in report.PAIRED_TARGETS:
                procs[target] = starters[target]()
                paired.rps[target] = []
            for round_no in range(self.args.paired_rounds):
                for target in report.PAIRED_TARGETS:
                    url = procs[target].url + SCENARIOS["query"]
                    if round_no == 0:
                        with contextlib.suppress(wrk.WrkError):
                            wrk.run(self.tools["wrk"], url, connections=conns, duration=WARMUP_SECS)
                    if self.progress is not None:
                        self.progress.step(f"side by side, round {round_no + 1}: {target}, query x{conns}")
                    time.sleep(PAUSE_SECS)
                    try:
                        result, _ = wrk.run(
                            self.tools["wrk"], url, connections=conns, duration=self.args.duration
                        )
                    except wrk.WrkError as exc:
                        say(f"side by side, {target}: {exc}")
                        continue
                    paired.rps[target].append(result.rps)
                    say(f"side by side, round {round_no + 1}: {target:<32} {result.rps:>9,.0f} req/s")
        except Exception as exc:
            self.notes.append(f"side-by-side rounds incomplete: {type(exc).__name__}: {exc}")
        finally:
            for proc in procs.values():
                self._stop(proc)

    def _run_target(
        self,
        target: str,
        start: Callable[[], NginxProcess | ProxyProcess],
        *,
        combos: Sequence[tuple[str, int]] | None = None,
        after: Callable[[ManagedProcess], None] | None = None,
    ) -> None:
        proc: NginxProcess | ProxyProcess | None = None
        try:
            try:
                proc = start()
            except Exception as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                say(f"{target} did not start: {exc}")
                self.skip(target, f"did not start: {first[:60]}", combos, status="failed")
                if self.progress is not None:
                    self.progress.skip(len(combos or self.all_combos()))
                self.notes.append(f"{target} did not start: {first}")
                return
            say(f"{target} on {proc.url} (pid {proc.pid})")
            running = proc
            self.measure(target, proc.url, proc.pid or 0, combos=combos, alive=lambda: running.running)
            if after is not None:
                after(proc)
        finally:
            self._stop(proc)

    def _idle_rss(self, proc: ProxyProcess) -> int | None:
        for _ in range(IDLE_REQUESTS):
            proc.client.get(proc.url + SCENARIOS["query"])
        time.sleep(0.5)
        rss = procfs.rss_bytes(proc.pid or 0)
        if rss is not None:
            say(f"idle RSS of ours after startup + {IDLE_REQUESTS} requests: {rss / report.MIB:.1f} MiB")
        return rss

    def _rss_after_load(self, proc: ManagedProcess) -> None:
        self.memory["RSS after load"] = procfs.rss_bytes(proc.pid or 0)

    def _gunicorn_unavailable(self) -> str | None:
        if self.args.quick:
            return "--quick"
        if not (REPO_ROOT / "gunicorn.conf.py").is_file():
            return "no gunicorn.conf.py in the repository"
        missing = [name for name in ("gunicorn", "uvicorn_worker") if importlib.util.find_spec(name) is None]
        if missing:
            return f"{' and '.join(missing)} not installed (pip install gunicorn uvicorn-worker)"
        return None

    def _start_gunicorn(self) -> ProxyProcess:
        prom = self.workdir / "prometheus"
        prom.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app.main:create_app_from_env()"]
        env = {"HYPERBYTEDB_PROXY_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(prom)}
        return self.start_ours(argv=argv, env=env, ready_checks=10)

    # ------------------------------------------------------------ streaming

    def stream_phase(self) -> None:
        size = self.args.stream_bytes
        path = stream.stream_path(size)
        timeout = max(60.0, size / 20e6)  # even 20 MB/s finishes in time
        node = NodeProcess(STREAM_HOST, self.stream_port, log_dir=self.logs)
        self._track(node).start()
        try:
            node.wait_ready(READY_TIMEOUT)
            say(f"streaming backend (sim node) on {node.url}")
            self._stream(report.STREAM_DIRECT, node.url, path, timeout)
            rp: NginxProcess | None = None
            try:
                rp = self.start_nginx_rp()
                self._stream(report.STREAM_NGINX, rp.url, path, timeout)
                self._stream(report.STREAM_NGINX_BUFFERED, rp.url, "/buffered" + path, timeout)
            finally:
                self._stop(rp)
            ours: ProxyProcess | None = None
            try:
                # The stream comes from the simulator's /_sim/stream, outside the default public paths.
                ours = self.start_ours(
                    backend=(STREAM_HOST, self.stream_port), env={"HYPERBYTEDB_PROXY_PUBLIC_PATHS": "*"}
                )
                self._stream(report.STREAM_OURS, ours.url, path, timeout, sample_pid=ours.pid)
            finally:
                self._stop(ours)
        finally:
            self._stop(node)

    def _stream(
        self, target: str, base: str, path: str, timeout: float, *, sample_pid: int | None = None
    ) -> None:
        row = StreamRow(target)
        self.streams.append(row)
        if self.progress is not None:
            self.progress.step(f"{target}, stream of {self.args.stream_bytes / report.MIB:g} MiB")
        try:
            warm = stream.stream_path(1024 * 1024)
            warm_base = base + ("/buffered" if path.startswith("/buffered") else "")
            for _ in range(3):  # opens the upstream connection and warms the code path
                stream.fetch(self.tools["curl"], warm_base + warm, expect_bytes=1024 * 1024, timeout=30)
            if sample_pid is None:
                row.result = stream.fetch(
                    self.tools["curl"], base + path, expect_bytes=self.args.stream_bytes, timeout=timeout
                )
            else:
                with procfs.RssSampler(sample_pid, max_secs=timeout + 10) as sampler:
                    row.result = stream.fetch(
                        self.tools["curl"], base + path, expect_bytes=self.args.stream_bytes, timeout=timeout
                    )
                row.rss_growth, row.rss_samples = sampler.growth, sampler.samples
        except stream.StreamError as exc:
            row.status, row.note = "failed", str(exc)[:80]
            say(f"{target}: stream failed: {exc}")
            return
        growth = "" if row.rss_growth is None else f", peak RSS growth {row.rss_growth / report.MIB:.1f} MiB"
        say(f"{target:<42} stream: {row.result.mb_per_s:,.0f} MB/s in {row.result.seconds:.2f} s{growth}")

    # ------------------------------------------------------------ summary

    def _access_log_lines(self) -> list[str]:
        """What the access log costs, ours and nginx's, each against itself with the log off."""
        lines: list[str] = []
        for on_target, off_target, what in (
            (report.OURS, report.OURS_LOG_OFF, "ours"),
            (report.NGINX_ACCESS_LOG, report.NGINX, "nginx"),
        ):
            for scenario in self.scenarios:
                for conns in self.args.connections:
                    on = report._find(self.rows, on_target, scenario, conns)
                    off = report._find(self.rows, off_target, scenario, conns)
                    if on is None or off is None or on.wrk is None or off.wrk is None:
                        continue
                    if not on.wrk.rps or not off.wrk.rps:
                        continue
                    added_us = (1 / on.wrk.rps - 1 / off.wrk.rps) * 1e6
                    cpu = (
                        f", CPU {on.cpu_per_10k:.2f} vs {off.cpu_per_10k:.2f} s/10k"
                        if on.cpu_per_10k is not None and off.cpu_per_10k is not None
                        else ""
                    )
                    lines.append(
                        f"Access log of {what}, {scenario} x{conns}: {on.wrk.rps:,.0f} req/s on vs "
                        f"{off.wrk.rps:,.0f} off = {on.wrk.rps / off.wrk.rps:.2f} x, "
                        f"{added_us:+.1f} us per request{cpu}"
                    )
        return ["", *lines] if lines else []

    def comparisons(self) -> list[str]:
        """The transport comparison and the cost of the access log, as text lines."""
        lines = ["Transport comparison (ours, builtin vs httpcore; same app, one uvicorn worker):", ""]
        body = []
        for scenario in self.scenarios:
            for conns in self.args.connections:
                builtin = report._find(self.rows, report.OURS, scenario, conns)
                httpcore = report._find(self.rows, report.OURS_HTTPCORE, scenario, conns)
                if builtin is None or httpcore is None:
                    continue
                b, h = builtin.wrk, httpcore.wrk
                assert b is not None and h is not None
                body.append(
                    [
                        scenario,
                        str(conns),
                        f"{b.rps:,.0f}",
                        f"{h.rps:,.0f}",
                        f"{b.rps / h.rps:.1f}x" if h.rps else "-",
                        report._num(b.p99_ms, ms=True),
                        report._num(h.p99_ms, ms=True),
                        f"{b.errors}/{h.errors}",
                    ]
                )
        if not body:
            return []
        headers = [
            "scenario",
            "conns",
            "builtin req/s",
            "httpcore req/s",
            "builtin/httpcore",
            "builtin p99 ms",
            "httpcore p99 ms",
            "errors b/h",
        ]
        lines += report._table(headers, body)
        lines += self._access_log_lines()
        return lines


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so every finally block stops its processes.

    SIGINT is set too because a shell starting us in the background leaves it ignored.
    """
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        tools = ensure(("wrk", "nginx", "curl"), log=say)
    except ToolError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hyperbytedb-bench-"))
    bench = Bench(args, tools, workdir)
    bench.progress = Progress(bench.planned_steps(), args.duration + PAUSE_SECS + STEP_OVERHEAD_SECS, say=say)
    ok = interrupted = False
    with _signals_interrupt():
        try:
            if bench.scenarios:
                bench.request_phase()
            if "stream" in args.only:
                bench.stream_phase()
            if "tls" in args.only and bench.scenarios:
                bench.tls_lines = tls.tls_phase(bench, bench._started)
            ok = True
        except KeyboardInterrupt:
            say("interrupted; stopping every process")
            interrupted = True
            return 130
        except Exception as exc:
            say(f"failed: {type(exc).__name__}: {exc}")
            say(f"logs kept in {workdir}")
            return 1
        finally:
            stop_all(bench.processes)
            failures = any(row.status == "failed" for row in bench.rows) or any(
                stream.status == "failed" for stream in bench.streams
            )
            if (ok or interrupted) and not (args.keep_logs or failures):
                shutil.rmtree(workdir, ignore_errors=True)
            elif ok:
                say(f"logs kept in {workdir}")
    return _finish(bench, args, tools, time.monotonic() - started)


def _finish(bench: Bench, args: argparse.Namespace, tools: dict[str, str], elapsed: float) -> int:
    paired = bench.paired
    report.annotate(bench.rows, judged_elsewhere=("T7", "T8") if paired else ())
    checks = report.evaluate(
        bench.rows, bench.streams, bench.memory["idle RSS"], stream_bytes=args.stream_bytes, paired=paired
    )
    text = report.render(bench.rows, bench.streams, checks, bench.memory, stream_bytes=args.stream_bytes)
    extra = bench.comparisons() + (["", *bench.tls_lines] if bench.tls_lines else [])
    if paired is not None:
        extra += ["", *paired.lines()]
    info = report.machine(tools)
    print()
    print(text)
    if extra:
        print()
        print("\n".join(extra))
    for note in bench.notes:
        print(f"note: {note}")
    print(
        f"\nmachine: {info['nproc']} x {info['cpu_model']}, kernel {info['kernel']}, "
        f"Python {info['python']}; "
        f"run took {elapsed:.0f} s; results in {args.json}"
    )
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_secs": round(elapsed, 1),
        "options": {
            "quick": args.quick,
            "duration_secs": args.duration,
            "connections": args.connections,
            "only": args.only,
            "stream_bytes": args.stream_bytes,
            "wrk": f"-t1 --latency --timeout {wrk.WRK_TIMEOUT}",
            "write_body_bytes": wrk.WRITE_BODY_BYTES,
        },
        "machine": info,
        "rows": [row.to_json() for row in bench.rows],
        "stream": [row.to_json() for row in bench.streams],
        "memory_bytes": bench.memory,
        "targets": [check.to_json() for check in checks],
        "side_by_side": paired.to_json() if paired is not None else None,
        "notes": bench.notes,
        "table": text,
        "comparisons": extra,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = [f"{r.target} {r.scenario} x{r.conns}" for r in bench.rows if r.status == "failed"]
    failed += [s.target + " stream" for s in bench.streams if s.status == "failed"]
    if failed:
        print(f"bench: {len(failed)} measurement(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
