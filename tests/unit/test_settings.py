from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.addresses import HostPort
from app.settings import Settings, SettingsError, env_name, load_settings, unknown_variables

REQUIRED = {"HYPERBYTEDB_PROXY_BACKEND_SERVICE": "db-headless.db.svc.cluster.local"}


def test_seed_defaults() -> None:
    s = load_settings(REQUIRED)
    assert s.listen == HostPort("0.0.0.0", 8086)
    assert (s.backend_port, s.discovery_interval_secs, s.health_interval_secs) == (8086, 5, 2)
    assert (s.health_path, s.health_timeout_ms, s.request_timeout_secs) == ("/health", 1500, 60)
    assert (s.hold_timeout_secs, s.max_retries, s.shutdown_grace_secs, s.self_ip) == (10, 2, 30, None)
    assert (s.connect_timeout_ms, s.max_body_bytes, s.dns_nameservers) == (1000, 26214400, ())
    assert (s.retry_on_timeout, s.log_format, s.log_level) == (False, "text", "info")


def test_every_field_has_a_documented_variable() -> None:
    for field, info in Settings.model_fields.items():
        assert info.description, field
        assert env_name(field).startswith(("HYPERBYTEDB_PROXY_", "LOG_", "PROMETHEUS_"))


def test_parses_listen_nameservers_and_lists() -> None:
    s = load_settings(
        REQUIRED
        | {
            "HYPERBYTEDB_PROXY_BACKEND_SERVICE": "a.svc, b.svc,127.0.0.9",
            "HYPERBYTEDB_PROXY_LISTEN": "[::1]:9000",
            "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": "127.0.0.1:5353, ::1",
            "HYPERBYTEDB_PROXY_SELF_IP": "127.0.0.7",
            "LOG_FORMAT": "JSON",
            "LOG_LEVEL": "Debug",
            "HYPERBYTEDB_PROXY_RETRY_ON_TIMEOUT": "true",
        }
    )
    assert s.backend_names == ("a.svc", "b.svc", "127.0.0.9")
    assert s.listen == HostPort("::1", 9000)
    assert s.dns_nameservers == (HostPort("127.0.0.1", 5353), HostPort("::1", 53))
    assert (s.self_ip, s.log_format, s.log_level, s.retry_on_timeout) == ("127.0.0.7", "json", "debug", True)


def test_empty_value_means_unset() -> None:
    s = load_settings(REQUIRED | {"HYPERBYTEDB_PROXY_SELF_IP": "", "HYPERBYTEDB_PROXY_MAX_RETRIES": " "})
    assert s.self_ip is None and s.max_retries == 2


def test_missing_backend_service_is_named() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({})
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("HYPERBYTEDB_PROXY_BACKEND_SERVICE is required")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HYPERBYTEDB_PROXY_LISTEN", "nowhere", "host:port"),
        ("HYPERBYTEDB_PROXY_LISTEN", "0.0.0.0:99999", "1-65535"),
        ("HYPERBYTEDB_PROXY_BACKEND_PORT", "0", "greater than or equal to 1"),
        ("HYPERBYTEDB_PROXY_BACKEND_PORT", "http", "valid integer"),
        ("HYPERBYTEDB_PROXY_DISCOVERY_INTERVAL_SECS", "-1", "greater than 0"),
        ("HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS", "soon", "valid number"),
        ("HYPERBYTEDB_PROXY_HEALTH_PATH", "health", "starting with '/'"),
        ("HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS", "1.5s", "valid integer"),
        ("HYPERBYTEDB_PROXY_REQUEST_TIMEOUT_SECS", "0", "greater than 0"),
        ("HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS", "-3", "greater than or equal to 0"),
        ("HYPERBYTEDB_PROXY_MAX_RETRIES", "two", "valid integer"),
        ("HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS", "x", "valid number"),
        ("HYPERBYTEDB_PROXY_SELF_IP", "10.0.0", "IPv4 or IPv6"),
        ("HYPERBYTEDB_PROXY_CONNECT_TIMEOUT_MS", "0", "greater than 0"),
        ("HYPERBYTEDB_PROXY_MAX_BODY_BYTES", "25MB", "valid integer"),
        ("HYPERBYTEDB_PROXY_DNS_NAMESERVERS", "dns.google", "IPv4 or IPv6"),
        ("HYPERBYTEDB_PROXY_DNS_NAMESERVERS", "127.0.0.1:abc", "not a number"),
        ("HYPERBYTEDB_PROXY_RETRY_ON_TIMEOUT", "maybe", "valid boolean"),
        ("HYPERBYTEDB_PROXY_TRUSTED_PROXIES", "10.0.0.0/33", "does not appear to be an IPv4 or IPv6 network"),
        (
            "HYPERBYTEDB_PROXY_TRUSTED_PROXIES",
            "ingress.local",
            "does not appear to be an IPv4 or IPv6 network",
        ),
        ("HYPERBYTEDB_PROXY_MAX_HEADER_BYTES", "64k", "valid integer"),
        ("HYPERBYTEDB_PROXY_CLIENT_BODY_TIMEOUT_SECS", "0", "greater than 0"),
        ("HYPERBYTEDB_PROXY_KEEPALIVE_TIMEOUT_SECS", "1.5", "valid integer"),
        ("LOG_FORMAT", "xml", "'text' or 'json'"),
        ("LOG_LEVEL", "loud", "'debug'"),
    ],
)
def test_bad_value_names_variable_value_and_expectation(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(REQUIRED | {variable: value})
    (line,) = err.value.problems
    assert line.startswith(f"{variable}={value!r} is invalid: ")
    assert expected in line


def test_a_problem_names_the_variable_as_spelled() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(REQUIRED | {"HYPERBYTEDB_PROXY_LOG_LEVEL": "loud"})
    (line,) = err.value.problems
    assert line.startswith("HYPERBYTEDB_PROXY_LOG_LEVEL='loud' is invalid: ")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"HYPERBYTEDB_PROXY_MAX_RETRIES": "x", "LOG_LEVEL": "loud"})
    assert len(err.value.problems) == 3  # the two bad values and the missing service


def test_unknown_prefixed_variables_are_reported() -> None:
    env = REQUIRED | {
        "HYPERBYTEDB_PROXY_MAX_RETRY": "1",
        "HYPERBYTEDB_PROXY_MAX_RETRIES": "1",
        "PATH": "/bin",
    }
    assert unknown_variables(env) == ["HYPERBYTEDB_PROXY_MAX_RETRY"]


def _run_main(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERBYTEDB_PROXY_", "LOG_"))}
    return subprocess.run(
        [sys.executable, "-m", "app"], env=base | env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.integration  # starts a process
def test_process_exits_2_with_one_line_per_problem_and_no_traceback() -> None:
    result = _run_main({"HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS": "fast", "HYPERBYTEDB_PROXY_LISTEN": "x"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert any("HYPERBYTEDB_PROXY_BACKEND_SERVICE is required" in line for line in lines)
    assert any("HYPERBYTEDB_PROXY_HEALTH_TIMEOUT_MS='fast'" in line for line in lines)
    assert any("HYPERBYTEDB_PROXY_LISTEN='x'" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [env_name(field) for field in Settings.model_fields if f"`{env_name(field)}`" not in readme]
    assert not missing


def test_an_explicit_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERBYTEDB_PROXY_MAX_RETRIES", "7")
    monkeypatch.setenv("HYPERBYTEDB_PROXY_ADMIN_TOKEN", "from-the-environment")
    s = load_settings(REQUIRED)
    assert s.max_retries == 2 and s.admin_token is None


def test_blank_admin_token_disables_the_admin_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERBYTEDB_PROXY_BACKEND_SERVICE", "db")
    monkeypatch.setenv("HYPERBYTEDB_PROXY_ADMIN_TOKEN", "")
    monkeypatch.setenv("HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS", "")
    s = load_settings()
    assert s.admin_token is None and s.hold_timeout_secs == 10
    assert load_settings(REQUIRED | {"HYPERBYTEDB_PROXY_ADMIN_TOKEN": "   "}).admin_token is None


def test_prefixed_log_variables_are_known() -> None:
    env = REQUIRED | {"HYPERBYTEDB_PROXY_LOG_FORMAT": "json", "HYPERBYTEDB_PROXY_LOG_LEVEL": "debug"}
    assert unknown_variables(env) == []
    s = load_settings(env)
    assert (s.log_format, s.log_level) == ("json", "debug")


def test_multiprocess_directory_is_a_setting(tmp_path: Path) -> None:
    assert load_settings(REQUIRED).prometheus_multiproc_dir is None
    s = load_settings(REQUIRED | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert s.prometheus_multiproc_dir == tmp_path


def test_lower_case_and_blank_values(tmp_path: Path) -> None:
    s = load_settings(
        {
            "hyperbytedb_proxy_backend_service": "db",
            "log_level": "warning",
            "HYPERBYTEDB_PROXY_DNS_NAMESERVERS": "   ",
            "PROMETHEUS_MULTIPROC_DIR": "",
        }
    )
    assert (s.backend_service, s.log_level, s.dns_nameservers) == ("db", "warning", ())
    assert s.prometheus_multiproc_dir is None


def test_settings_built_directly_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERBYTEDB_PROXY_BACKEND_SERVICE", "from-env")
    monkeypatch.setenv("HYPERBYTEDB_PROXY_MAX_RETRIES", "")
    monkeypatch.setenv("LOG_FORMAT", "json")
    s = Settings()  # type: ignore[call-arg]  # the environment provides backend_service
    assert (s.backend_service, s.max_retries, s.log_format) == ("from-env", 2, "json")
    assert Settings(backend_service="given").backend_service == "given"


@pytest.mark.integration  # starts a process
def test_missing_multiprocess_directory_is_a_configuration_error() -> None:
    result = _run_main(REQUIRED | {"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/prometheus"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hyperbytedb-proxy: configuration error: PROMETHEUS_MULTIPROC_DIR='/nonexistent/prometheus' "
        "is invalid: expected an existing directory"
    ]


def test_client_limits_defaults_match_nginx_where_nginx_has_one() -> None:
    s = load_settings(REQUIRED)
    assert (s.client_header_timeout_secs, s.client_body_timeout_secs, s.send_timeout_secs) == (60, 60, 60)
    assert (s.max_header_bytes, s.max_headers, s.keepalive_timeout_secs) == (65536, 100, 75)
    assert s.trusted_proxies == ()


def test_trusted_proxies_accept_cidrs_and_single_addresses() -> None:
    s = load_settings(REQUIRED | {"HYPERBYTEDB_PROXY_TRUSTED_PROXIES": " 10.0.0.0/8, 192.0.2.7 ,fd00::/8,"})
    assert [str(network) for network in s.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]


def test_the_command_line_warns_once_per_unknown_variable(caplog: pytest.LogCaptureFixture) -> None:
    from app.__main__ import warn_unknown_variables

    with caplog.at_level("WARNING", logger="hyperbytedb_proxy"):
        warn_unknown_variables(REQUIRED | {"HYPERBYTEDB_PROXY_HOLD_TIMEOUT": "5", "LOG_FORMAT": "json"})
    assert [record.getMessage() for record in caplog.records] == ["ignoring unknown setting"]
    assert caplog.records[0].fields == {"variable": "HYPERBYTEDB_PROXY_HOLD_TIMEOUT"}  # type: ignore[attr-defined]


def test_an_existing_multiprocess_directory_passes_the_startup_check(tmp_path: Path) -> None:
    from app.__main__ import load_settings_or_exit

    env = REQUIRED | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    assert load_settings_or_exit(env).prometheus_multiproc_dir == tmp_path
    with pytest.raises(SystemExit) as exit_:
        load_settings_or_exit(REQUIRED | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")})
    assert exit_.value.code == 2
