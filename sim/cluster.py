"""The local demo: a DNS server, N simulated nodes and the proxy, all on loopback.

``python -m sim.cluster`` stands up what a Kubernetes namespace would hold -- a
headless Service (``hyperbytedb.demo.`` served by :mod:`sim.dns`), one pod per
node (``sim.node`` on 127.0.0.2, 127.0.0.3, ... all on the same port, as pods
are) and the proxy on 127.0.0.1 -- so the proxy can be tried and benchmarked
by hand.  The nodes replicate to each other (:mod:`sim.replication`), so a
point written through the proxy is visible whichever node answers a query.
``SIGUSR1`` restarts the nodes one by one, as a rolling restart of the
StatefulSet would.  It stops every child when interrupted (Ctrl-C, SIGTERM) or
after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from sim.processes import DNSProcess, ManagedProcess, NodeProcess, ProxyProcess, stop_all

SERVICE = "hyperbytedb.demo"
MAX_NODES = 250  # 127.0.0.2 .. 127.0.0.251
DRAIN_SECS = 3.0  # a draining node stays up this long, so the proxy's probe sees it first


def node_ips(count: int) -> list[str]:
    """Loopback IPs of the nodes: 127.0.0.2, 127.0.0.3, ..."""
    return [f"127.0.0.{index + 2}" for index in range(count)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (127.0.0.2 upwards)")
    parser.add_argument("--proxy-port", type=int, default=8086, help="proxy port on 127.0.0.1")
    parser.add_argument("--node-port", type=int, default=8086, help="port of every node")
    parser.add_argument("--dns-port", type=int, default=15353, help="DNS port on 127.0.0.1 (UDP+TCP)")
    parser.add_argument("--service", default=SERVICE, help="DNS name of the simulated headless Service")
    parser.add_argument("--no-proxy", action="store_true", help="only DNS and nodes (benchmark baseline)")
    parser.add_argument(
        "--no-replication", action="store_true", help="every node keeps only the points it was sent"
    )
    parser.add_argument("--duration", type=float, default=None, help="exit by itself after SECS")
    parser.add_argument("--workdir", type=Path, default=None, help="data and logs here (kept)")
    parser.add_argument(
        "--proxy-env", action="append", default=[], metavar="KEY=VALUE", help="extra proxy variable"
    )
    return parser


def proxy_env(args: argparse.Namespace, dns: DNSProcess) -> dict[str, str]:
    """Environment of the demo proxy: fast discovery and probing so changes show within seconds."""
    env = {
        "HYPERBYTEDB_PROXY_BACKEND_SERVICE": args.service,
        "HYPERBYTEDB_PROXY_BACKEND_PORT": str(args.node_port),
        "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": dns.nameserver,
        "HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS": "1",
        "HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS": "2",
    }
    for item in args.proxy_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--proxy-env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def banner(
    args: argparse.Namespace,
    dns: DNSProcess,
    nodes: list[NodeProcess],
    proxy: ProxyProcess | None,
    workdir: Path,
) -> str:
    """What is running and a few commands to try."""
    first = nodes[0]
    lines = [
        "cluster ready",
        f"  dns    {dns.nameserver}  {args.service}. -> {', '.join(node.host for node in nodes)}",
        *(f"  node   {node.url}  ({node.name})" for node in nodes),
        f"  proxy  {proxy.url}" if proxy else "  proxy  (not started: --no-proxy)",
        f"  logs   {workdir}",
        "",
        "Try:",
    ]
    target = proxy.url if proxy else first.url
    lines += [
        f"  curl -i -XPOST '{target}/write?db=demo' --data-binary 'cpu,host=a value=1'",
        f"  curl -sG '{target}/query' --data-urlencode db=demo --data-urlencode 'q=SELECT count(*) FROM cpu'",
    ]
    if proxy:
        lines += [
            f"  curl -s {proxy.url}/admin/backends",
            f"  curl -s {proxy.url}/metrics | grep '^hyperbytedb_proxy_'",
            "",
            f"Status page: {proxy.url}/admin  (open it in a browser)",
            f"Rolling restart, watched on the status page: kill -USR1 {os.getpid()}",
            "  (each node in turn drains, restarts, syncs from its peers and turns active again)",
            "",
        ]
    lines += [
        f'  curl -XPOST {first.url}/_sim/state -d \'{{"state":"draining"}}\'   # drain {first.name}',
        f'  curl -XPOST {first.url}/_sim/state -d \'{{"state":"active"}}\'   # and bring it back',
        f"  curl -s '{first.url}/_sim/points?count_only=1'   # points it holds",
        "",
        "Ctrl-C (or SIGTERM) stops everything.",
    ]
    return "\n".join(lines)


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def rolling_restart(nodes: list[NodeProcess], *, drain_secs: float = DRAIN_SECS) -> None:
    """Restart the nodes one at a time as a StatefulSet does, each back to active before the next."""
    for index, node in enumerate(nodes, start=1):
        started = time.monotonic()
        print(f"rolling restart {index}/{len(nodes)}: {node.name} draining", flush=True)
        node.set_state("draining")
        time.sleep(drain_secs)
        node.stop()
        print(
            f"rolling restart {index}/{len(nodes)}: {node.name} restarting (syncing from peers)", flush=True
        )
        node.start().wait_ready(timeout=15)
        node.wait_active(timeout=60)
        took = time.monotonic() - started
        print(f"rolling restart {index}/{len(nodes)}: {node.name} active again after {took:.1f}s", flush=True)
    print("rolling restart done", flush=True)


def run(args: argparse.Namespace) -> int:
    """Start everything, wait for the signal or the duration, stop everything."""
    if not 1 <= args.nodes <= MAX_NODES:
        print(f"--nodes must be between 1 and {MAX_NODES}", file=sys.stderr)
        return 2
    owned_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sim-cluster-")) if owned_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    ips = node_ips(args.nodes)
    processes: list[ManagedProcess] = []
    code = 0
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        dns = DNSProcess(
            args.dns_port, workdir / "zone.json", records={f"{args.service}.": ips}, log_dir=workdir
        )
        processes.append(dns)
        dns.start()
        nodes = [
            NodeProcess(
                ip,
                args.node_port,
                data_dir=workdir / f"node-{index + 1}",
                name=f"node-{index + 1}",
                peer=f"{ips[(index + 1) % len(ips)]}:{args.node_port}",
                replicas=()
                if args.no_replication
                else [f"{peer}:{args.node_port}" for peer in ips if peer != ip],
                log_dir=workdir,
            )
            for index, ip in enumerate(ips)
        ]
        for node in nodes:
            processes.append(node)
            node.start()
        for node in nodes:
            node.wait_ready(timeout=15)
        for node in nodes:
            node.wait_active(timeout=30)
        proxy = None
        if not args.no_proxy:
            proxy = ProxyProcess(proxy_env(args, dns), listen=f"127.0.0.1:{args.proxy_port}", log_dir=workdir)
            processes.append(proxy)
            proxy.start()
            proxy.wait_ready(timeout=30)
        print(banner(args, dns, nodes, proxy, workdir), flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        reported: set[str] = set()
        restart_requested: list[int] = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: restart_requested.append(signum))
        while deadline is None or time.monotonic() < deadline:  # until a signal or the duration
            time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
            if restart_requested:
                restart_requested.clear()
                try:
                    rolling_restart(nodes)
                except (TimeoutError, RuntimeError, OSError) as exc:
                    print(f"rolling restart stopped: {exc}", flush=True)
            for process in processes:
                if not process.running and process.log_path.name not in reported:
                    reported.add(process.log_path.name)
                    print(f"note: {process.kind} {process.log_path.name} exited", flush=True)
    except _Interrupted as exc:
        print(f"\n{exc}: stopping", flush=True)
    except (TimeoutError, RuntimeError, OSError) as exc:
        print(f"cluster failed to start: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # stopping is bounded; do not abandon it halfway
        try:
            stop_all(processes)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGUSR1, previous_usr1)
            if owned_workdir and code == 0:
                shutil.rmtree(workdir, ignore_errors=True)
    print("cluster stopped", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
