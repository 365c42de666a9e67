"""A raw-socket HTTP/1.1 client for hostile-input tests: it sends exactly the bytes given.

Loopback only; every read has a deadline, so a test never hangs on a proxy
that forgot to answer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 10.0


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


class RawClient:
    """One TCP connection to the proxy, driven byte by byte."""

    def __init__(
        self, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT, rcvbuf: int | None = None
    ) -> None:
        if not host.startswith("127."):
            raise ValueError(f"hostile tests stay on loopback, not {host}")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the proxy closed or reset the connection meanwhile."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def send_until_refused(self, chunk: bytes, limit: int) -> int:
        """Send ``chunk`` again and again, up to ``limit`` bytes; how many the proxy took."""
        sent = 0
        while sent < limit:
            try:
                self.sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        return sent

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False on EOF."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        if not data:
            return False
        self._buffer += data
        return True

    def read_response(
        self, timeout: float = DEFAULT_TIMEOUT, *, head_only: bool = False
    ) -> RawResponse | None:
        """The next response, or None when the connection ended before a whole one arrived."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill(deadline):
                return None
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        response = RawResponse(status, headers)
        if head_only:
            return response
        length = response.header("content-length")
        if length is not None:
            while len(self._buffer) < int(length):
                if not self._fill(deadline):
                    return None
            response.body, self._buffer = self._buffer[: int(length)], self._buffer[int(length) :]
        elif response.header("transfer-encoding") == "chunked":
            response.body = self._read_chunked(deadline)
        return response

    def _read_chunked(self, deadline: float) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self._buffer:
                if not self._fill(deadline):
                    raise ConnectionError("chunked body cut")
            size_line, _, self._buffer = self._buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self._buffer) < size + 2:
                if not self._fill(deadline):
                    raise ConnectionError("chunked body cut")
            body += self._buffer[:size]
            self._buffer = self._buffer[size + 2 :]
            if size == 0:
                return body

    def closed_within(self, timeout: float) -> bool:
        """Whether the proxy ends the connection (EOF or reset) within ``timeout``; data is kept."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
            if not data:
                return True
            self._buffer += data
        return False


@contextlib.contextmanager
def connection(host: str, port: int, **kwargs: float | int | None) -> Iterator[RawClient]:
    client = RawClient(host, port, **kwargs)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        client.close()


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str = "proxy",
) -> bytes:
    """The bytes of one request, exactly as given (no header is added but Host)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def open_fds(pid: int | None) -> int:
    """Descriptors the process holds open right now."""
    return len(os.listdir(f"/proc/{pid}/fd"))
