"""Real certificates for the TLS tests, made with the openssl command, and TLS-aware processes.

A test CA signs server certificates that name DNS names only (never an IP),
as the HyperbyteDB operator's certificates name the headless Service.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from sim.processes import NodeProcess, ProxyProcess

OPENSSL_TIMEOUT = 30


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=OPENSSL_TIMEOUT)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class TestCA:
    """A throwaway certificate authority in a directory."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "Test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def issue(self, label: str, *names: str, client: bool = False, directory: Path | None = None) -> Pair:
        """A leaf certificate for ``names`` (DNS names), for a server or, with ``client``, a client."""
        where = directory or self.directory
        where.mkdir(parents=True, exist_ok=True)
        key, csr, cert, ext = (where / f"{label}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
        usage = "clientAuth" if client else "serverAuth"
        lines = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
        if names:
            lines.append("subjectAltName=" + ",".join(f"DNS:{name}" for name in names))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0] if names else label}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(uuid.uuid4().int >> 64), "-days", "2", "-out", str(cert), "-extfile", str(ext),
        )  # fmt: skip
        return Pair(cert, key)


class SecretVolume:
    """A directory laid out as Kubernetes mounts a Secret: files behind a ``..data`` symlink.

    :meth:`publish` swaps the link atomically, as the kubelet does on a renewal.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.cert = directory / "tls.crt"
        self.key = directory / "tls.key"
        self._generation = 0

    def publish(self, pair: Pair) -> None:
        self._generation += 1
        version = self.directory / f"..v{self._generation}"
        version.mkdir()
        (version / "tls.crt").write_bytes(pair.cert.read_bytes())
        (version / "tls.key").write_bytes(pair.key.read_bytes())
        link = self.directory / "..data"
        tmp = self.directory / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, link)
        for name in ("tls.crt", "tls.key"):
            if not (self.directory / name).is_symlink():
                (self.directory / name).symlink_to(f"..data/{name}")


def client_context(ca: Path, pair: Pair | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


class TLSNode(NodeProcess):
    """A simulated HyperbyteDB node serving HTTPS, as an operator-managed TLS pod does."""

    def __init__(self, host: str, port: int, pair: Pair, ca: Path, **kwargs: object) -> None:
        args = ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
        super().__init__(host, port, extra_args=args, **kwargs)  # type: ignore[arg-type]
        self._ca = ca

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    @property
    def client(self) -> httpx.Client:
        # The tests' own control calls go to the IP; the certificate names the Service.
        if self._client is None:
            ctx = client_context(self._ca)
            ctx.check_hostname = False
            self._client = httpx.Client(timeout=2.0, trust_env=False, verify=ctx)
        return self._client


class SecureProxy(ProxyProcess):
    """The proxy with TLS on its listener(s) and/or a separate admin listener.

    ``host_name`` is the DNS name its certificate carries (``localhost``, so
    that every client resolves it to loopback without touching /etc/hosts).
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        ca: Path | None = None,
        client_pair: Pair | None = None,
        host_name: str = "localhost",
        admin_port: int | None = None,
        **kwargs: object,
    ) -> None:
        if admin_port is not None:
            env = {**env, "HYPERBYTEDB_PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}"}
        super().__init__(env, **kwargs)  # type: ignore[arg-type]
        self.ca = ca
        self.client_pair = client_pair
        self.host_name = host_name
        self.admin_port = admin_port

    @property
    def scheme(self) -> str:
        return "https" if "HYPERBYTEDB_PROXY_TLS_CERT_FILE" in self.env else "http"

    @property
    def url(self) -> str:
        host = self.host_name if self.scheme == "https" else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def admin_url(self) -> str:
        if self.admin_port is None:
            return self.url
        host = self.host_name if self.scheme == "https" else self.host
        return f"{self.scheme}://{host}:{self.admin_port}"

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.ca is not None:
                verify = client_context(self.ca, self.client_pair)
            self._client = httpx.Client(timeout=5.0, trust_env=False, verify=verify)
        return self._client

    def wait_healthy(self, timeout: float = 10.0) -> Self:
        self._poll_status(f"{self.admin_url}/healthz", 200, timeout, "healthy")
        return self

    def wait_ready(self, timeout: float = 10.0) -> Self:
        self._poll_status(f"{self.admin_url}/readyz", 200, timeout, "ready")
        return self

    def backends(self) -> dict[str, dict[str, object]]:
        data = self.client.get(f"{self.admin_url}/admin/backends").json()
        return {b["address"]: b for b in data["backends"]}
