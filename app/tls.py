"""TLS contexts for both sides of the proxy, and certificate rotation on the listener.

Listener side: TLS 1.2 or later, forward-secret AEAD ciphers only, an
optional client CA that makes client certificates mandatory.  cert-manager
renews a mounted Secret by swapping files under the pod's feet; the
:class:`CertificateReloader` notices (inode, size or mtime change) and loads
the new chain into the live context, which OpenSSL applies to every
handshake from then on: no restart, no dropped connection.

Backend side: the pods are dialled by IP, while their certificates name the
headless Service, so the name checked (and sent as SNI) is a setting, not
the address.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass

from app.settings import ENV_PREFIX, Settings, SettingsError

log = logging.getLogger("hyperbytedb_proxy.tls")

# TLS 1.2 suites with forward secrecy and authenticated encryption; TLS 1.3's
# suites are all of that already and are not affected by set_ciphers.
STRONG_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"
RELOAD_CHECK_SECS = 1.0
ALPN = ["http/1.1"]


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(STRONG_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(ALPN)
    return ctx


def listener_context(cert_file: str, key_file: str, client_ca_file: str | None = None) -> ssl.SSLContext:
    """A server context for the listener(s); raises ssl.SSLError or OSError on bad files."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def backend_context(settings: Settings) -> ssl.SSLContext | None:
    """The client context for forwards and probes, or None when the backends speak plain HTTP."""
    if not settings.backend_tls:
        return None
    ctx = _harden(ssl.create_default_context(cafile=settings.backend_ca_file))
    if settings.backend_tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.backend_client_cert_file is not None:
        ctx.load_cert_chain(settings.backend_client_cert_file, settings.backend_client_key_file)
    return ctx


def check_tls_settings(settings: Settings) -> None:
    """Load every configured certificate once, so a bad file stops startup naming its variable."""
    problems: list[str] = []
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        try:
            listener_context(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            problems.append(
                f"{ENV_PREFIX}TLS_CERT_FILE={settings.tls_cert_file!r} / {ENV_PREFIX}TLS_KEY_FILE="
                f"{settings.tls_key_file!r} / {ENV_PREFIX}TLS_CLIENT_CA_FILE={settings.tls_client_ca_file!r} "
                f"are invalid: {exc}"
            )
    try:
        backend_context(settings)
    except (ssl.SSLError, OSError) as exc:
        problems.append(
            f"{ENV_PREFIX}BACKEND_CA_FILE={settings.backend_ca_file!r} / "
            f"{ENV_PREFIX}BACKEND_CLIENT_CERT_FILE={settings.backend_client_cert_file!r} / "
            f"{ENV_PREFIX}BACKEND_CLIENT_KEY_FILE="
            f"{settings.backend_client_key_file!r} are invalid: {exc}"
        )
    if problems:
        raise SettingsError(problems)


def warn_about_tls(settings: Settings) -> None:
    """Startup warnings for choices that weaken security on purpose."""
    if settings.backend_tls and settings.backend_tls_insecure:
        log.warning(
            "backend certificates are NOT verified (BACKEND_TLS_INSECURE=true): "
            "anyone on the path to the pods can read and change traffic"
        )
    if settings.backend_tls_insecure and not settings.backend_tls:
        log.warning("BACKEND_TLS_INSECURE has no effect without BACKEND_TLS=true")


@dataclass(frozen=True, slots=True)
class _Stamp:
    inode: int
    size: int
    mtime_ns: int


def _stamp(path: str) -> _Stamp | None:
    try:
        st = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link
    except OSError:
        return None
    return _Stamp(st.st_ino, st.st_size, st.st_mtime_ns)


class CertificateReloader:
    """Reload a listener's certificate chain into its live context when the files change.

    A half-written pair (new certificate, old key) fails to load; the old
    chain stays in service and the next check tries again, so a rotation
    never leaves the listener without a certificate.
    """

    def __init__(
        self,
        ctx: ssl.SSLContext,
        cert_file: str,
        key_file: str,
        client_ca_file: str | None = None,
        *,
        interval: float = RELOAD_CHECK_SECS,
    ) -> None:
        self.ctx = ctx
        self._cert = cert_file
        self._key = key_file
        self._client_ca = client_ca_file
        self._interval = interval
        self._stamps = self._current()
        self.reloads = 0

    def _files(self) -> tuple[str, ...]:
        return (self._cert, self._key) + ((self._client_ca,) if self._client_ca else ())

    def _current(self) -> tuple[_Stamp | None, ...]:
        return tuple(_stamp(path) for path in self._files())

    def check(self) -> bool:
        """Reload if any file changed since the last successful load; True when it did."""
        stamps = self._current()
        if stamps == self._stamps or None in stamps:
            return False
        try:
            self.ctx.load_cert_chain(self._cert, self._key)
            if self._client_ca is not None:
                # Adds the new CA; a CA dropped from the bundle stays trusted until restart.
                self.ctx.load_verify_locations(cafile=self._client_ca)
        except (ssl.SSLError, OSError) as exc:
            log.warning(
                "new TLS certificate could not be loaded; keeping the current one",
                extra={"fields": {"cert_file": self._cert, "error": str(exc)}},
            )
            return False
        self._stamps = stamps
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"fields": {"cert_file": self._cert}})
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()
