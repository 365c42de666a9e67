"""A backend that answers with whatever bytes a test scripts, on a loopback address.

Health probes get a plain 200 so the proxy routes to it; every other request
is recorded (head, body, connection number, request number on that
connection) and handed to the test's script, which writes raw bytes and says
whether the connection stays open.  Threads and blocking sockets keep it out
of the test's event loop; every wait is bounded by a socket timeout.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

HEALTH_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"status":"ok"}'
SOCKET_TIMEOUT = 10.0


@dataclass(slots=True)
class Arrival:
    """One request as the backend read it."""

    head: bytes
    connection: int  # which accepted connection (0, 1, ...)
    index: int  # which request on that connection (0 for the first)
    body: bytes = b""

    @property
    def target(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None


@dataclass(slots=True)
class Exchange:
    """What a script gets: the request so far and the socket to answer on."""

    arrival: Arrival
    sock: socket.socket
    _pending: bytes

    def read_body(self) -> bytes:
        """Read the declared body (Content-Length) before answering."""
        length = int(self.arrival.header(b"content-length") or 0)
        data = self._pending
        while len(data) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        self.arrival.body, self._pending = data[:length], data[length:]
        return self.arrival.body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a crashed process's kernel would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# A script answers one request; it returns True to keep the connection open.
Script = Callable[[Exchange], bool]


@dataclass
class RawBackend:
    host: str
    port: int
    script: Script
    arrivals: list[Arrival] = field(default_factory=list)
    connections: int = 0
    _server: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Self:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.port))
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=SOCKET_TIMEOUT + 1)
        if self._server is not None:
            self._server.close()

    @property
    def forward_connections(self) -> int:
        """Connections that carried proxied requests (probes use their own)."""
        with self._lock:
            return len({a.connection for a in self.arrivals})

    def requests_to(self, path: bytes) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.target.startswith(path)]

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                number = self.connections
                self.connections += 1
            self._spawn(self._serve, sock, number)

    def _serve(self, sock: socket.socket, number: int) -> None:
        sock.settimeout(0.5)
        pending = b""
        index = 0
        deadline = time.monotonic() + 60  # no connection outlives a test
        try:
            while not self._stopping.is_set() and time.monotonic() < deadline:
                while b"\r\n\r\n" not in pending:
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        if self._stopping.is_set():
                            return
                        continue
                    if not chunk:
                        return
                    pending += chunk
                head, pending = pending.split(b"\r\n\r\n", 1)
                sock.settimeout(SOCKET_TIMEOUT)
                arrival = Arrival(head, number, index)
                if arrival.target.startswith(b"/health"):
                    exchange = Exchange(arrival, sock, pending)
                    exchange.read_body()
                    pending = exchange._pending
                    sock.sendall(HEALTH_OK)
                else:
                    with self._lock:
                        self.arrivals.append(arrival)
                    index += 1
                    exchange = Exchange(arrival, sock, pending)
                    if not self.script(exchange):
                        return
                    pending = exchange._pending
                sock.settimeout(0.5)
        except OSError:
            return
        finally:
            sock.close()


def answer(raw: bytes, *, keep: bool = True) -> Script:
    """A script that reads the body and sends ``raw``."""

    def script(exchange: Exchange) -> bool:
        exchange.read_body()
        exchange.send(raw)
        return keep

    return script
