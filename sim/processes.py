"""Real processes for integration tests, chaos runs, benchmarks and the demo.

Each helper starts one child (``python -m sim.node``, ``python -m sim.dns`` or
``python -m app``) in its own session, so that stopping it also stops anything
it spawned, and logs its output to a file whose path a failing test can print.
Every wait has a deadline and an iteration cap; :meth:`stop` is idempotent and
always reaps, so it belongs in ``finally`` blocks and fixture teardowns.

HTTP calls use ``httpx.Client(trust_env=False)``: a proxy variable in the
environment must never send loopback test traffic anywhere else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_SECS = 0.05
# Variables a child needs to run Python at all; everything else (proxies, HYPERBYTEDB_PROXY_*) stays out.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT")


class ProcessExited(RuntimeError):
    """The child died while we were waiting for it."""


def _check_loopback(host: str) -> str:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{host} is not a loopback address; the simulator stays on 127.0.0.0/8")
    return host


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small, predictable child environment: the basics from ours, then ``extra``."""
    env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def free_port(host: str = "127.0.0.1", *, udp: bool = False, attempts: int = 20) -> int:
    """A port that is free right now on ``host`` for TCP (and UDP too with ``udp``)."""
    _check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(attempts):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            if not udp:
                return port
            with socket.socket(family, socket.SOCK_DGRAM) as dgram:
                try:
                    dgram.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no free port on {host} after {attempts} attempts")


def free_port_on_all(hosts: Sequence[str], *, attempts: int = 50) -> int:
    """One port free on every host (nodes of a cluster share a port, as pods do)."""
    for _ in range(attempts):
        port = free_port(hosts[0])
        if all(_tcp_bindable(host, port) for host in hosts[1:]):
            return port
    raise OSError(f"no port free on all of {', '.join(hosts)} after {attempts} attempts")


def _tcp_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout: float = 5.0) -> None:
    """Return once ``host:port`` accepts TCP connections; TimeoutError after ``timeout``."""
    _check_loopback(host)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_SECS) + 2):
        try:
            with socket.create_connection((host, port), timeout=min(0.5, timeout)):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECS)
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s")


class ManagedProcess:
    """One child process in its own session, with a log file and bounded waits."""

    kind = "process"

    def __init__(self, *, log_dir: str | os.PathLike[str] | None = None, label: str = "") -> None:
        if log_dir is None:
            # Logs outlive the process on purpose (a failing test prints the path); keep them in one place.
            parent = Path(tempfile.gettempdir()) / "hyperbytedb-sim"
            parent.mkdir(exist_ok=True)
            log_dir = tempfile.mkdtemp(prefix=f"{self.kind}-", dir=parent)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.kind}{'-' + label if label else ''}.log"
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None  # outlives the leader, so leftovers can still be killed
        self._client: httpx.Client | None = None
        self._starts = 0

    # ----------------------------------------------------------------- to override

    def command(self) -> list[str]:
        """argv of the child."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Environment of the child."""
        return minimal_env()

    # ----------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the child (again, after a stop or kill); output goes to :attr:`log_path`."""
        if self.running:
            raise RuntimeError(f"{self.kind} already running (pid {self.pid})")
        self._reap_quietly()
        self._kill_group()  # anything left over from the previous run
        self._starts += 1
        argv = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self._starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pgid = self._proc.pid
        self.returncode = None
        return self

    def send_signal(self, sig: int) -> None:
        """Signal the child itself (not its group), as Kubernetes signals PID 1."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM the child; does not wait (see :meth:`wait_exit` / :meth:`stop`)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child's whole process group and reap it."""
        self._kill_group()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5.0)
        self._reap_quietly()

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the child exits within ``timeout``, else None (it keeps running)."""
        if self._proc is None:
            return self.returncode
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reap_quietly()
        return code

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL the group after ``timeout``; always reaps. Returns the exit code."""
        proc = self._proc
        if proc is None:
            self._kill_group()  # e.g. workers left behind by a leader reaped in wait_exit()
            self._pgid = None
            return self.returncode
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._kill_group()
                    proc.wait(5.0)
        finally:
            self._kill_group()  # leftovers (workers) of a leader that has exited
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
            self._reap_quietly()
            self._pgid = None
        return self.returncode

    def _kill_group(self) -> None:
        """SIGKILL the child's session (its own process group, see ``start_new_session``)."""
        if self._pgid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, signal.SIGKILL)

    def _reap_quietly(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self.returncode = self._proc.returncode
            self._proc = None
        if self._client is not None and self._proc is None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- helpers

    def log_text(self) -> str:
        """Everything the child wrote so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, for assertion messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _ensure_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            raise ProcessExited(f"{self.kind} exited with {code}; log {self.log_path}:\n{self.log_tail()}")
        if self._proc is None:
            raise ProcessExited(f"{self.kind} is not running; log {self.log_path}")

    @property
    def client(self) -> httpx.Client:
        """A short-timeout client that ignores proxy settings in the environment."""
        if self._client is None:
            self._client = httpx.Client(timeout=2.0, trust_env=False)
        return self._client

    def _poll_status(self, url: str, want: int, timeout: float, what: str) -> None:
        """Poll ``url`` until it answers ``want``, the child dies or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        for _ in range(int(timeout / POLL_SECS) + 2):
            self._ensure_alive()
            try:
                response = self.client.get(url, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                if response.status_code == want:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECS)
        message = f"{self.kind} not {what} within {timeout}s (last: {last}); log {self.log_path}"
        raise TimeoutError(f"{message}:\n{self.log_tail()}")


# --------------------------------------------------------------------------- nodes


class NodeProcess(ManagedProcess):
    """``python -m sim.node`` on one loopback IP; restartable on the same data dir."""

    kind = "node"

    def __init__(
        self,
        host: str,
        port: int = 8086,
        state: str = "active",
        data_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        extra_args: Sequence[str] = (),
        *,
        peer: str | None = None,
        sync_secs: float | None = None,
        replicas: Sequence[str] = (),
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = _check_loopback(host)
        self.port = port
        self.state = state
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.name = name or f"{host}:{port}"
        self.peer = peer
        self.sync_secs = sync_secs
        self.replicas = tuple(replicas)
        self.extra_args = tuple(extra_args)
        super().__init__(log_dir=log_dir, label=f"{host}-{port}")

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "sim.node", "--host", self.host, "--port", str(self.port)]
        argv += ["--state", self.state, "--name", self.name]
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        if self.peer:
            argv += ["--peer", self.peer]
        if self.sync_secs is not None:
            argv += ["--sync-secs", str(self.sync_secs)]
        for replica in self.replicas:
            argv += ["--replicate-to", replica]
        return argv + list(self.extra_args)

    def wait_ready(self, timeout: float = 10.0) -> Self:
        """Wait until the node answers its control endpoint (whatever its simulated state)."""
        self._poll_status(f"{self.url}/_sim/state", 200, timeout, "answering")
        return self

    def wait_active(self, timeout: float = 30.0) -> Self:
        """Wait for ``/health`` 200: the node serves (a replicating node has caught up)."""
        self._poll_status(f"{self.url}/health", 200, timeout, "active")
        return self

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """Call a ``/_sim/`` endpoint and return its JSON."""
        response = self.client.request(method, f"{self.url}/_sim/{path.lstrip('/')}", json=body)
        response.raise_for_status()
        return response.json()

    def set_state(self, state: str, sync_secs: float | None = None) -> dict[str, Any]:
        """Switch the simulated state (see ``sim.node.STATES``)."""
        body: dict[str, Any] = {"state": state}
        if sync_secs is not None:
            body["sync_secs"] = sync_secs
        answer: dict[str, Any] = self.control("POST", "state", body)
        return answer

    def points(self, db: str | None = None) -> list[str]:
        """Stored points as line protocol (nanosecond timestamps)."""
        path = "points" + (f"?db={db}" if db else "")
        return list(self.control("GET", path)["points"])

    def point_count(self, db: str | None = None) -> int:
        path = "points?count_only=1" + (f"&db={db}" if db else "")
        return int(self.control("GET", path)["count"])

    def requests(self) -> dict[str, Any]:
        """Requests served per path since start (or the last reset)."""
        return dict(self.control("GET", "requests"))

    def fail(self, status: int, count: int | None = 1, **spec: Any) -> None:
        """Answer the next ``count`` matching requests with ``status`` (see ``/_sim/fail``)."""
        self.control("POST", "fail", {"status": status, "count": count, **spec})

    def delay(self, secs: float, count: int | None = 1, **spec: Any) -> None:
        """Delay the next ``count`` matching requests by ``secs`` (see ``/_sim/delay``)."""
        self.control("POST", "delay", {"secs": secs, "count": count, **spec})

    def reset(self) -> None:
        """Clear faults, delays and counters; state back to active."""
        self.control("POST", "reset")


# --------------------------------------------------------------------------- proxy


class ProxyProcess(ManagedProcess):
    """``python -m app`` configured only through ``HYPERBYTEDB_PROXY_*`` variables."""

    kind = "proxy"

    def __init__(
        self,
        env: Mapping[str, str],
        listen: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if listen is None:
            listen = f"127.0.0.1:{free_port('127.0.0.1')}"
        host, _, port = listen.rpartition(":")
        self.host = _check_loopback(host.strip("[]"))
        self.port = int(port)
        self.listen = listen
        self.env = dict(env)
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "app"]
        super().__init__(log_dir=log_dir, label=f"{self.host}-{self.port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        return list(self.argv)

    def environment(self) -> dict[str, str]:
        return minimal_env({"HYPERBYTEDB_PROXY_LISTEN": self.listen, **self.env})

    def wait_healthy(self, timeout: float = 10.0) -> Self:
        """Wait for ``/healthz`` 200 (the process is up and serving)."""
        self._poll_status(f"{self.url}/healthz", 200, timeout, "healthy")
        return self

    def wait_ready(self, timeout: float = 10.0) -> Self:
        """Wait for ``/readyz`` 200 (at least one backend is Active)."""
        self._poll_status(f"{self.url}/readyz", 200, timeout, "ready")
        return self

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self


# --------------------------------------------------------------------------- DNS


class DNSProcess(ManagedProcess):
    """``python -m sim.dns`` serving a zone file that :meth:`set_records` rewrites atomically."""

    kind = "dns"

    def __init__(
        self,
        port: int = 0,
        zone_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        records: Mapping[str, Iterable[str]] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = _check_loopback(host)
        self.port = port
        super().__init__(log_dir=log_dir, label=f"{host}-{port}")
        self.zone_path = Path(zone_path) if zone_path is not None else self.log_dir / "zone.json"
        self._records: dict[str, list[str]] = {}
        if records is not None:
            self._records = {name: list(ips) for name, ips in records.items()}
            self._write_zone()
        elif self.zone_path.exists():
            self._records = dict(json.loads(self.zone_path.read_text() or "{}"))

    @property
    def nameserver(self) -> str:
        """``ip:port``, as ``HYPERBYTEDB_PROXY_DNS_NAMESERVERS`` wants it."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "sim.dns", "--host", self.host, "--port", str(self.port)]
        return [*argv, "--zone", str(self.zone_path)]

    def start(self, timeout: float = 10.0) -> Self:
        """Start and wait for the ``dns listening on`` line (it carries the port when 0 was asked)."""
        if not self.zone_path.exists():
            self._write_zone()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        super().start()
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_SECS) + 2):
            self._ensure_alive()
            for line in self.log_text()[offset:].splitlines():
                if line.startswith("dns listening on "):
                    self.port = int(line.rsplit(":", 1)[1])
                    return self
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECS)
        self.stop()
        raise TimeoutError(f"dns did not start within {timeout}s; log {self.log_path}:\n{self.log_tail()}")

    def _write_zone(self) -> None:
        """Write the zone to a temp file and rename it over the old one (never half-written)."""
        self.zone_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.zone_path.parent, prefix=".zone-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self._records, handle)
            os.replace(tmp, self.zone_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def set_records(self, name: str, ips: Iterable[str], wait: float | None = 3.0) -> None:
        """Set ``name``'s addresses; with ``wait``, return once the server answers with them."""
        self._records[name] = list(ips)
        self._write_zone()
        if wait is not None and self.running:
            self._wait_answer(name, sorted(self._records[name]), wait)

    def remove(self, name: str, wait: float | None = 3.0) -> None:
        """Drop ``name`` (NXDOMAIN); with ``wait``, return once the server says so."""
        self._records.pop(name, None)
        self._write_zone()
        if wait is not None and self.running:
            self._wait_answer(name, None, wait)

    def lookup(self, name: str, rdtype: str = "A", timeout: float = 1.0) -> list[str] | None:
        """Ask the server directly: sorted addresses, or None for NXDOMAIN."""
        import dns.message
        import dns.query
        import dns.rcode

        query = dns.message.make_query(name if name.endswith(".") else name + ".", rdtype)
        response = dns.query.udp(query, self.host, timeout=timeout, port=self.port)
        if response.rcode() == dns.rcode.NXDOMAIN:
            return None
        return sorted(item.to_text() for rrset in response.answer for item in rrset)

    def _wait_answer(self, name: str, want: list[str] | None, timeout: float) -> None:
        """Poll the server until ``name`` answers ``want`` (None: NXDOMAIN), bounded by ``timeout``."""
        if want is not None:
            want = sorted(str(ipaddress.ip_address(ip)) for ip in want)
        deadline = time.monotonic() + timeout
        got: list[str] | None = None
        for _ in range(int(timeout / POLL_SECS) + 2):
            self._ensure_alive()
            try:
                v4 = self.lookup(name, "A")
                got = None if v4 is None else sorted([*v4, *(self.lookup(name, "AAAA") or [])])
            except Exception:  # a timeout or a bad reply while the server reloads
                got = []
            if got == want:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECS)
        raise TimeoutError(f"dns did not serve {name} -> {want} within {timeout}s (last answer {got})")


def stop_all(processes: Iterable[ManagedProcess | None], timeout: float = 5.0) -> None:
    """Stop every process (in reverse order of the iterable), even when some stops fail."""
    errors: list[BaseException] = []
    for process in reversed(list(processes)):
        if process is None:
            continue
        try:
            process.stop(timeout)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
