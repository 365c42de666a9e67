"""``python -m bench.profile``: where one proxied request spends its CPU time.

Starts the nginx backend and our proxy (as ``python -m bench`` does), drives
the small query with wrk, and samples the proxy with py-spy
(``pip install py-spy``).  Two wrk runs back to back: the first, without the
profiler, gives the CPU time per request; the second, under py-spy, gives
the shares.  The output splits that time by layer (uvicorn, Starlette, our
proxy code, httpx, the transport, metrics, logging, the event loop) and
lists the inclusive time of the functions on the hot path.  The collapsed
stacks are kept in ``.bench/profile.txt`` (speedscope.app opens them).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench import procfs, wrk
from bench.cli import SCENARIOS, Bench, parse_args, say
from bench.tools import ToolError, ensure
from sim.processes import REPO_ROOT, stop_all

DEFAULT_OUTPUT = REPO_ROOT / ".bench" / "profile.txt"

# Layer of a frame, by where its code lives; checked in order.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log (app/access_log.py, event loop and writer thread)", ("app/access_log.py",)),
    ("logging (stdlib + app/logs.py)", ("logging/", "app/logs.py")),
    ("prometheus-client metrics", ("prometheus_client/",)),
    ("builtin transport (app/transport.py)", ("app/transport.py",)),
    ("httpx (nothing per request unless a test transport is injected)", ("httpx/",)),
    ("our app code (app/*: proxy, headers, pool, protocol limits, metrics)", ("app/",)),
    ("starlette (middleware stack, router)", ("starlette/",)),
    ("uvicorn (httptools protocol, ASGI cycle)", ("uvicorn/",)),
)
LOOP = "event loop: epoll, socket reads, task scheduling"
# The two functions that hand a request's bytes to the kernel: their own time is
# the write system calls (and the loopback delivery to the peer they include).
SOCKET_WRITES = "socket writes (request to the backend, response to the client)"
WRITERS = (("_Connection.send", "app/transport.py"), ("HeadHoldingTransport.write", "app/http_protocol.py"))
# Frames that are on every stack because they started the server, not because they work.
BOOTSTRAP = (
    "runpy.py",
    "app/__main__.py",
    "uvicorn/server.py",
    "uvicorn/main.py",
    "uvicorn/_compat.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "uvloop/__init__.py",
    "app/server.py",
    "<frozen runpy>",
)

# (label, qualified function name as py-spy prints it or "*", file fragment, function whose
# presence below excludes the sample): inclusive time while that function is on the stack.
HOT_PATH = (
    (
        "uvicorn: HttpToolsProtocol.data_received (parse, start task)",
        "HttpToolsProtocol.data_received",
        "uvicorn/",
        None,
    ),
    (
        "uvicorn: run_asgi (the request's task, all of the app)",
        "RequestResponseCycle.run_asgi",
        "uvicorn/",
        None,
    ),
    (
        "main: ProxyApp.__call__ (fast path around Starlette)",
        "ProxyApp.__call__",
        "app/main.py",
        "ProxyEndpoint.__call__",
    ),
    (
        "starlette: everything but the endpoint (middleware, router)",
        "Starlette.__call__",
        "starlette/",
        "ProxyEndpoint.__call__",
    ),
    (
        "proxy: ProxyEndpoint.__call__ (the endpoint, all of it)",
        "ProxyEndpoint.__call__",
        "app/proxy.py",
        None,
    ),
    ("proxy: _read_body", "ProxyEndpoint._read_body", "app/proxy.py", None),
    ("proxy: _request_headers", "ProxyEndpoint._request_headers", "app/proxy.py", None),
    ("headers: request_headers", "request_headers", "app/headers.py", None),
    (
        "transport: forward (build the request head, write, await the head)",
        "UpstreamTransport.forward",
        "app/transport.py",
        None,
    ),
    (
        "transport: _Connection.data_received (parse response)",
        "_Connection.data_received",
        "app/transport.py",
        None,
    ),
    ("proxy: _relay (response start + body to uvicorn)", "ProxyEndpoint._relay", "app/proxy.py", None),
    ("headers: response_headers", "response_headers", "app/headers.py", None),
    ("uvicorn: RequestResponseCycle.send (serialize, write)", "RequestResponseCycle.send", "uvicorn/", None),
    (
        "transport: UpstreamReply.aclose (connection back to the pool)",
        "UpstreamReply.aclose",
        "app/transport.py",
        None,
    ),
    ("proxy: _record (metrics + access log)", "ProxyEndpoint._record", "app/proxy.py", None),
    ("proxy: disconnect watcher task", "_watch", "app/disconnects.py", None),
    ("asyncio.timeout (anywhere)", "*", "asyncio/timeouts.py", None),
    ("prometheus-client (anywhere)", "*", "prometheus_client/", None),
    ("logging (anywhere)", "*", "logging/", None),
    ("access log: formatting, batching, hand-over (anywhere)", "*", "app/access_log.py", None),
    ("gc callbacks / weakref cleanup (anywhere)", "*", "_weakrefset.py", None),
)


def _frame_parts(frame: str) -> tuple[str, str]:
    """'func (path/file.py:12)' -> ('func', 'path/file.py')."""
    name, _, where = frame.partition(" (")
    return name.strip(), where.rstrip(")").rpartition(":")[0] or where.rstrip(")")


def load_stacks(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_frame_parts(f) for f in stack.split(";")], int(count)))
    return stacks


def layer_of(frames: Sequence[tuple[str, str]]) -> str:
    """The layer a sample's own time belongs to: its innermost frame outside the standard library,
    so a stdlib helper (re, enum, asyncio.timeout) counts for the code that called it."""
    name, path = frames[-1]
    if any(name == writer and path.endswith(where) for writer, where in WRITERS):
        return SOCKET_WRITES
    for _, path in reversed(frames):
        if any(marker in path for marker in BOOTSTRAP):
            continue
        for layer, markers in LAYERS:
            if any(marker in path for marker in markers):
                return layer
    return LOOP


def _blocked(frames: Sequence[tuple[str, str]]) -> bool:
    """A thread waiting on a condition (the access log's writer, idle): py-spy counts it, the CPU does not."""
    name, path = frames[-1]
    return name == "Condition.wait" and path.endswith("threading.py")


def summarize(
    stacks: Iterable[tuple[list[tuple[str, str]], int]],
) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    total = 0
    layers: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if _blocked(frames):
            continue
        total += count
        layers[layer_of(frames)] += count
        for label, function, fragment, unless in HOT_PATH:
            if unless is not None and any(name == unless for name, _ in frames):
                continue
            if any(fragment in path and function in ("*", name) for name, path in frames):
                inclusive[label] += count
    return total, layers, inclusive


def render(
    total: int,
    layers: collections.Counter[str],
    inclusive: collections.Counter[str],
    us_per_request: float | None,
) -> str:
    def us(count: int) -> str:
        return "" if us_per_request is None else f"{count / total * us_per_request:8.1f} us"

    lines = [
        f"{total} samples"
        + (
            ""
            if us_per_request is None
            else f"; {us_per_request:.1f} us of proxy CPU per request (measured without py-spy)"
        ),
        "",
        "Self time by layer:",
    ]
    for layer, count in layers.most_common():
        lines.append(f"  {count / total:6.1%} {us(count)}  {layer}")
    lines += ["", "Inclusive time on the hot path (a function and everything it calls):"]
    for label, *_ in HOT_PATH:
        count = inclusive.get(label, 0)
        if not count:
            continue  # not on this code's path (e.g. a function an older version had)
        lines.append(f"  {count / total:6.1%} {us(count)}  {label}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="length of each wrk run (default 15)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--stacks", type=Path, default=None, help="summarize an existing collapsed-stack file"
    )
    parser.add_argument(
        "--us-per-request", type=float, default=None, help="with --stacks: CPU us per request"
    )
    args = parser.parse_args(argv)
    if args.stacks is not None:
        total, layers, inclusive = summarize(load_stacks(args.stacks.read_text()))
        print(render(total, layers, inclusive, args.us_per_request))
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("bench.profile: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    try:
        tools = ensure(("wrk", "nginx", "curl"), log=say)
    except ToolError as exc:
        print(f"bench.profile: {exc}", file=sys.stderr)
        return 2
    bench_args = parse_args(["--only", "query", "--connections", str(args.connections)])
    workdir = Path(tempfile.mkdtemp(prefix="hyperbytedb-profile-"))
    bench = Bench(bench_args, tools, workdir)
    url_path = SCENARIOS["query"]
    try:
        backend = bench.start_backend()
        ours = bench.start_ours()
        url = ours.url + url_path
        pid = ours.pid or 0
        wrk.run(tools["wrk"], url, connections=args.connections, duration=2)  # warm-up
        before = procfs.tree_cpu_ticks(pid)
        clean, _ = wrk.run(tools["wrk"], url, connections=args.connections, duration=args.seconds)
        cpu = procfs.ticks_to_secs(procfs.tree_cpu_ticks(pid) - before)
        us_per_request = cpu / clean.requests * 1e6 if clean.requests else None
        say(f"without py-spy: {clean.rps:,.0f} req/s, {us_per_request:.1f} us CPU per request")
        load = subprocess.Popen(
            [tools["wrk"], "-t1", f"-c{args.connections}", f"-d{args.seconds + 2}s", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(1)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            record = [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(args.seconds),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(args.output),
            ]
            subprocess.run(record, check=True, timeout=args.seconds + 60, capture_output=True)
        finally:
            load.kill()
            load.wait(timeout=10)
        total, layers, inclusive = summarize(load_stacks(args.output.read_text()))
        print(render(total, layers, inclusive, us_per_request))
        print(f"\ncollapsed stacks: {args.output}")
        del backend
    except KeyboardInterrupt:
        return 130
    finally:
        stop_all(bench.processes)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
