"""A small authoritative DNS server on loopback, standing in for a headless Service.

The proxy discovers HyperbyteDB pods through DNS (one A/AAAA record per pod);
tests and the demo need to add, remove and swap those records while the proxy
runs.  This server answers A and AAAA from an in-memory table over UDP and TCP
(TTL 1 so nothing caches a stale pod for long), in a background thread, or as a
process (``python -m sim.dns --zone zone.json``) that reloads the zone file when
it changes.

Answers: a known name gets its A/AAAA records (NOERROR with no answer for a
type it has none of); an unknown name gets NXDOMAIN.  Every record address must
be a loopback address: the simulator never sends anyone off 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType, TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

DEFAULT_TTL = 1
MAX_TCP_CONNECTIONS = 64
TCP_IDLE_SECS = 10.0
POLL_SECS = 0.2
BIND_ATTEMPTS = 20

Table = dict[dns.name.Name, tuple[tuple[str, ...], tuple[str, ...]]]  # name -> (IPv4s, IPv6s)


def to_name(name: str | dns.name.Name) -> dns.name.Name:
    """An absolute DNS name; a missing trailing dot is implied (dnspython compares case-insensitively)."""
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    return dns.name.from_text(name.strip())


def split_ips(ips: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate addresses (loopback only) and split them into IPv4 and IPv6."""
    v4: list[str] = []
    v6: list[str] = []
    for text in ips:
        address = ipaddress.ip_address(str(text).strip())
        if not address.is_loopback:
            raise ValueError(f"{address} is not a loopback address; the simulator stays on 127.0.0.0/8")
        (v4 if address.version == 4 else v6).append(str(address))
    return tuple(v4), tuple(v6)


def parse_zone(data: Mapping[str, Iterable[str]]) -> Table:
    """A table from ``{"name.": ["127.0.0.2", ...]}``; raises ValueError on a bad entry."""
    if not isinstance(data, Mapping):
        raise ValueError("a zone is a JSON object mapping names to lists of addresses")
    table: Table = {}
    for name, ips in data.items():
        if isinstance(ips, str) or not isinstance(ips, Iterable):
            raise ValueError(f"{name}: expected a list of addresses")
        table[to_name(name)] = split_ips(ips)
    return table


class DNSServer:
    """UDP+TCP DNS server in a background thread, answering from a runtime-mutable table."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        records: Mapping[str, Iterable[str]] | None = None,
        *,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host} is not a loopback address")
        self.host = host
        self._requested_port = port
        self._port = 0
        self.ttl = ttl
        self._lock = threading.Lock()
        self._table: Table = parse_zone(records or {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None

    # ----------------------------------------------------------------- records

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    def set_records(self, name: str, ips: Iterable[str]) -> None:
        """Replace the addresses of ``name`` (an empty list keeps the name: NOERROR, no answer)."""
        key, value = to_name(name), split_ips(ips)
        with self._lock:
            self._table[key] = value

    def remove(self, name: str) -> None:
        """Forget ``name`` entirely (it answers NXDOMAIN afterwards)."""
        key = to_name(name)
        with self._lock:
            self._table.pop(key, None)

    def replace_all(self, records: Mapping[str, Iterable[str]]) -> None:
        """Swap the whole table at once (zone reloads)."""
        table = parse_zone(records)
        with self._lock:
            self._table = table

    def records(self) -> dict[str, list[str]]:
        """A snapshot of the table as ``{"name.": [ips]}``."""
        with self._lock:
            return {name.to_text(): [*v4, *v6] for name, (v4, v6) in self._table.items()}

    # ----------------------------------------------------------------- answering

    def handle(self, wire: bytes, *, max_size: int = 65535) -> bytes | None:
        """Answer one DNS message (None for garbage that does not even parse)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            question = query.question[0]
            with self._lock:
                entry = self._table.get(question.name)
            if entry is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdclass in (dns.rdataclass.IN, dns.rdataclass.ANY):
                wanted = {
                    dns.rdatatype.A: ((dns.rdatatype.A, entry[0]),),
                    dns.rdatatype.AAAA: ((dns.rdatatype.AAAA, entry[1]),),
                    dns.rdatatype.ANY: ((dns.rdatatype.A, entry[0]), (dns.rdatatype.AAAA, entry[1])),
                }.get(question.rdtype, ())
                for rdtype, ips in wanted:
                    if ips:
                        response.answer.append(
                            dns.rrset.from_text_list(question.name, self.ttl, "IN", rdtype, list(ips))
                        )
        if query.edns >= 0:
            max_size = min(max_size, max(512, query.payload))
        return response.to_wire(max_size=max_size, prefer_truncation=True)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> DNSServer:
        """Bind UDP and TCP on the same port and serve in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._bind()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"dns-{self.host}:{self.port}", daemon=True)
        self._thread.start()
        return self

    def _bind(self) -> None:
        for _ in range(BIND_ATTEMPTS if self._requested_port == 0 else 1):
            udp = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(udp.family, socket.SOCK_STREAM)
            try:
                udp.bind((self.host, self._requested_port))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.host, port))
                tcp.listen(16)
            except OSError:
                udp.close()
                tcp.close()
                if self._requested_port != 0:
                    raise
                continue  # the TCP side of a random UDP port was taken: pick another
            udp.setblocking(False)
            tcp.setblocking(False)
            self._udp, self._tcp, self._port = udp, tcp, port
            return
        raise OSError(f"no port free for both UDP and TCP on {self.host} after {BIND_ATTEMPTS} tries")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close the sockets (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        """Serve until :meth:`stop`; select() wakes every 50 ms to notice it."""
        assert self._udp is not None and self._tcp is not None
        selector = selectors.DefaultSelector()
        selector.register(self._udp, selectors.EVENT_READ, "udp")
        selector.register(self._tcp, selectors.EVENT_READ, "listen")
        buffers: dict[socket.socket, bytearray] = {}
        seen: dict[socket.socket, float] = {}
        try:
            while not self._stop.is_set():
                for key, _events in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if key.data == "udp":
                        self._on_udp(sock)
                    elif key.data == "listen":
                        self._on_accept(sock, selector, buffers, seen)
                    else:
                        self._on_tcp(sock, selector, buffers, seen)
                now = time.monotonic()
                for conn in [c for c, t in seen.items() if now - t > TCP_IDLE_SECS]:
                    self._drop(conn, selector, buffers, seen)
        finally:
            for conn in list(buffers):
                self._drop(conn, selector, buffers, seen)
            selector.close()

    def _on_udp(self, sock: socket.socket) -> None:
        for _ in range(64):  # drain what is queued, then let TCP have a turn
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            reply = self.handle(data, max_size=512)
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, addr)

    def _on_accept(
        self,
        sock: socket.socket,
        selector: selectors.BaseSelector,
        buffers: dict[socket.socket, bytearray],
        seen: dict[socket.socket, float],
    ) -> None:
        try:
            conn, _addr = sock.accept()
        except OSError:
            return
        if len(buffers) >= MAX_TCP_CONNECTIONS:
            conn.close()
            return
        conn.setblocking(False)
        buffers[conn] = bytearray()
        seen[conn] = time.monotonic()
        selector.register(conn, selectors.EVENT_READ, "conn")

    def _on_tcp(
        self,
        conn: socket.socket,
        selector: selectors.BaseSelector,
        buffers: dict[socket.socket, bytearray],
        seen: dict[socket.socket, float],
    ) -> None:
        try:
            data = conn.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn, selector, buffers, seen)
            return
        buffer = buffers[conn]
        buffer.extend(data)
        seen[conn] = time.monotonic()
        for _ in range(64):  # each pass consumes one length-prefixed message
            if len(buffer) < 2:
                return
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                return
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            reply = self.handle(message)
            if reply is None:
                self._drop(conn, selector, buffers, seen)
                return
            try:
                conn.settimeout(1.0)  # small replies on loopback: a blocking send is fine
                conn.sendall(len(reply).to_bytes(2, "big") + reply)
                conn.setblocking(False)
            except OSError:
                self._drop(conn, selector, buffers, seen)
                return

    @staticmethod
    def _drop(
        conn: socket.socket,
        selector: selectors.BaseSelector,
        buffers: dict[socket.socket, bytearray],
        seen: dict[socket.socket, float],
    ) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        buffers.pop(conn, None)
        seen.pop(conn, None)
        conn.close()


# --------------------------------------------------------------------------- process mode


def _load_zone_file(path: Path) -> tuple[bytes, dict[str, list[str]]] | None:
    """The zone file's bytes and JSON, or None when it is missing or unreadable right now."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        return raw, json.loads(raw)
    except ValueError:
        return None


def _loopback(value: str) -> str:
    try:
        if ipaddress.ip_address(value).is_loopback:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r} is not a loopback IP address")


def main(argv: list[str] | None = None) -> int:
    """Serve a zone file, reloading it when its content changes; stop on SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m sim.dns", description=__doc__.split("\n")[0])
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=15353, help="0 picks a free port")
    parser.add_argument("--zone", type=Path, required=True, help='JSON {"name.": ["127.0.0.2", ...]}')
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = DNSServer(args.host, args.port)
    last: bytes | None = None
    loaded = _load_zone_file(args.zone)
    if loaded is not None:
        last = loaded[0]
        server.replace_all(loaded[1])
    server.start()
    print(f"dns listening on {server.host}:{server.port}", flush=True)
    try:
        while not stop.wait(POLL_SECS):  # runs until signalled; one cheap read per poll
            loaded = _load_zone_file(args.zone)
            if loaded is None or loaded[0] == last:
                continue
            last = loaded[0]
            try:
                server.replace_all(loaded[1])
            except ValueError as exc:
                print(f"dns: ignoring invalid zone {args.zone}: {exc}", file=sys.stderr, flush=True)
                continue
            print(f"dns reloaded {len(loaded[1])} names", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
