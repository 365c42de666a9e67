"""TLS contexts and certificate rotation, without any server: real certificates, made by openssl."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from app.settings import SettingsError
from app.tls import CertificateReloader, backend_context, check_tls_settings, listener_context
from tests.integration.tls_support import SecretVolume, TestCA
from tests.unit.harness import SERVICE, make_settings


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def test_listener_context_is_tls12_plus_with_strong_ciphers(ca: TestCA) -> None:
    pair = ca.issue("server", "localhost")
    ctx = listener_context(str(pair.cert), str(pair.key), str(ca.cert))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    names = {cipher["name"] for cipher in ctx.get_ciphers()}
    assert names and not any("CBC" in n or n.endswith("-SHA") or "RC4" in n or "3DES" in n for n in names)


def test_reloader_picks_up_a_renewal_and_survives_a_half_written_pair(ca: TestCA, tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "tls")
    volume.publish(ca.issue("first", "localhost"))
    ctx = listener_context(str(volume.cert), str(volume.key))
    reloader = CertificateReloader(ctx, str(volume.cert), str(volume.key))
    assert not reloader.check()  # nothing changed
    volume.publish(ca.issue("second", "localhost"))
    assert reloader.check() and reloader.reloads == 1
    # A certificate whose key does not match yet: refused, the old chain stays, retried later.
    mismatched = ca.issue("third", "localhost")
    other = ca.issue("fourth", "localhost")
    volume.cert.resolve().write_bytes(mismatched.cert.read_bytes())
    volume.key.resolve().write_bytes(other.key.read_bytes())
    assert not reloader.check() and reloader.reloads == 1
    volume.key.resolve().write_bytes(mismatched.key.read_bytes())
    assert reloader.check() and reloader.reloads == 2


def test_backend_context_verifies_the_service_name_unless_told_otherwise(ca: TestCA) -> None:
    assert backend_context(make_settings()) is None
    settings = make_settings(backend_tls="true", backend_ca_file=str(ca.cert))
    ctx = backend_context(settings)
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert settings.backend_tls_name == SERVICE
    assert make_settings(backend_server_name="db.svc").backend_tls_name == "db.svc"
    insecure = backend_context(make_settings(backend_tls="true", backend_tls_insecure="true"))
    assert insecure is not None and not insecure.check_hostname and insecure.verify_mode == ssl.CERT_NONE


def test_unreadable_certificates_stop_startup_naming_the_variables(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(SettingsError, match="HYPERBYTEDB_PROXY_TLS_CERT_FILE"):
        check_tls_settings(make_settings(tls_cert_file=str(junk), tls_key_file=str(junk)))
    with pytest.raises(SettingsError, match="HYPERBYTEDB_PROXY_BACKEND_CA_FILE"):
        check_tls_settings(make_settings(backend_tls="true", backend_ca_file=str(tmp_path / "missing.pem")))
