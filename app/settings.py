"""Configuration from the environment, validated once at startup.

Every setting has the ``HYPERBYTEDB_PROXY_`` prefix except ``LOG_FORMAT`` and
``LOG_LEVEL``.  A bad value must stop the process with a message an operator
can act on, so :func:`load_settings` turns pydantic's errors into one line
per problem naming the variable, the value given and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "HYPERBYTEDB_PROXY_"
DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class HostPort:
    """A host (name or IP literal, without brackets) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str, *, default_port: int | None = None) -> HostPort:
    """Parse ``host:port``, ``[v6]:port``, or a bare host when a default port is given."""
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']' after an IPv6 address")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError("expected ':port' after ']'")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, None  # a bare name, IPv4 or unbracketed IPv6
    if port_text is None:
        if default_port is None:
            raise ValueError("expected host:port, e.g. 0.0.0.0:8086 or [::]:8086")
        port = default_port
    else:
        if not port_text.isdigit():
            raise ValueError(f"port {port_text!r} is not a number")
        port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    if not host:
        raise ValueError("the host part is empty")
    return HostPort(host, port)


class Settings(BaseSettings):
    """Everything the proxy can be told; immutable once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        case_sensitive=False,
        validate_by_name=True,
    )

    listen: Annotated[HostPort, NoDecode] = Field(
        default=HostPort("0.0.0.0", 8086),
        description="Address and port for client and admin traffic.",
    )
    backend_service: str = Field(
        description="DNS name(s) of the HyperbyteDB headless Service, comma-separated; "
        "IP literals and /etc/hosts names work too.",
    )
    backend_port: int = Field(default=8086, ge=1, le=65535, description="Port on every backend.")
    discovery_interval_secs: float = Field(
        default=5, gt=0, description="Seconds between DNS resolutions of the backend service."
    )
    health_interval_secs: float = Field(default=2, gt=0, description="Seconds between probe rounds.")
    health_path: str = Field(default="/health", description="HTTP path probed on every backend.")
    health_timeout_ms: int = Field(
        default=1500, gt=0, description="Deadline of one probe; slower means Down."
    )
    health_rise: int = Field(
        default=1, ge=1, description="Consecutive successful probes before a backend turns Active."
    )
    health_fall: int = Field(
        default=1, ge=1, description="Consecutive failed probes before an Active backend turns Down."
    )
    request_timeout_secs: float = Field(
        default=60,
        gt=0,
        description="Longest wait for a backend's response headers, and longest silence mid-body.",
    )
    connect_timeout_ms: int = Field(
        default=1000, gt=0, description="Deadline for opening a connection to a backend."
    )
    hold_timeout_secs: float = Field(
        default=10, ge=0, description="Longest time a request waits for an Active backend before 503."
    )
    max_retries: int = Field(
        default=2, ge=0, description="Extra forwards after a retryable failure that reached a backend."
    )
    retry_on_timeout: bool = Field(
        default=False, description="Retry a request whose backend did not answer in time on another backend."
    )
    retry_budget_percent: float = Field(
        default=20,
        ge=0,
        le=100,
        description="Retries allowed as a share of the requests in the budget window.",
    )
    retry_budget_min_retries: int = Field(
        default=10, ge=0, description="Retries always allowed per budget window, however quiet the proxy."
    )
    retry_budget_window_secs: float = Field(
        default=10, gt=0, description="Length of the sliding window of the retry budget."
    )
    max_body_bytes: int = Field(
        default=26_214_400, gt=0, description="Largest request body accepted (413 above it)."
    )
    max_pending: int = Field(
        default=1024, ge=1, description="Most requests held waiting for a backend at once (503 above it)."
    )
    max_buffered_bytes: int = Field(
        default=268_435_456,
        ge=1,
        description="Most request-body bytes buffered at once across all requests (503 above it).",
    )
    backend_max_header_bytes: int = Field(
        default=65_536,
        ge=1024,
        description="Largest response head (status line and headers) accepted from a backend (502 above it).",
    )
    backend_max_headers: int = Field(
        default=100, ge=1, description="Most response headers accepted from a backend (502 above it)."
    )
    shutdown_grace_secs: float = Field(
        default=30, ge=0, description="Longest drain of in-flight requests after SIGTERM."
    )
    self_ip: str | None = Field(default=None, description="This pod's IP; never added as a backend.")
    dns_nameservers: Annotated[tuple[HostPort, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated ip[:port] DNS servers overriding /etc/resolv.conf.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token that enables the admin write endpoints."
    )
    workers: int = Field(default=1, ge=1, description="Worker processes when served by gunicorn.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        validation_alias=AliasChoices("LOG_FORMAT", f"{ENV_PREFIX}LOG_FORMAT"),
        description="Log line format: text or json.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info",
        validation_alias=AliasChoices("LOG_LEVEL", f"{ENV_PREFIX}LOG_LEVEL"),
        description="Lowest level logged.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings() reads the environment itself (so that empty means
        # unset and errors can quote the raw value); nothing else may.
        return (init_settings,)

    @field_validator("admin_token")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(value.get_secret_value().strip())

    @field_validator("listen", mode="before")
    @classmethod
    def _parse_listen(cls, value: Any) -> Any:
        return parse_host_port(value) if isinstance(value, str) else value

    @field_validator("backend_service")
    @classmethod
    def _check_service(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",")]
        if not all(names):
            raise ValueError("expected one or more DNS names or IPs, comma-separated")
        return ",".join(names)

    @field_validator("health_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("expected a path starting with '/'")
        return value

    @field_validator("self_ip")
    @classmethod
    def _check_self_ip(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return str(ipaddress.ip_address(value.strip()))

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _parse_nameservers(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        servers = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            server = parse_host_port(item, default_port=DNS_PORT)
            ipaddress.ip_address(server.host)  # nameservers must be IP literals
            servers.append(server)
        return tuple(servers)

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(self.backend_service.split(","))


class SettingsError(Exception):
    """Raised with one human-readable line per invalid or missing variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def env_name(field: str) -> str:
    """The environment variable that sets a field."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def _describe(error: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    field = str(error["loc"][0]) if error["loc"] else ""
    name = env_name(field) if field in Settings.model_fields else field
    if error["type"] == "missing":
        return f"{name} is required: {Settings.model_fields[field].description}"
    given = _lookup(environ, name)
    expected = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{name}={given!r} is invalid: {expected}"


def _lookup(environ: Mapping[str, str], name: str) -> str:
    lowered = name.lower()
    for key, value in environ.items():
        if key.lower() == lowered:
            return value
    return ""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment).

    An empty value counts as unset, as Kubernetes manifests often render
    optional variables that way.  Raises :class:`SettingsError` listing every
    problem, so one restart fixes them all.
    """
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for field in Settings.model_fields:
        value = _lookup(env, env_name(field)) or _lookup(env, ENV_PREFIX + field.upper())
        if value.strip():
            values[field] = value
    try:
        # Validating a mapping keyed by field name bypasses pydantic-settings'
        # own environment source, so ``environ`` is the only input.
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError([_describe(err, env) for err in exc.errors()]) from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Prefixed variables that match no setting: usually a typo worth a warning."""
    known = {env_name(field).upper() for field in Settings.model_fields}
    known |= {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    return sorted(key for key in environ if key.upper().startswith(ENV_PREFIX) and key.upper() not in known)


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log one warning per prefixed variable that no setting reads."""
    import logging

    log = logging.getLogger("hyperbytedb_proxy")
    for name in unknown_variables(environ):
        log.warning("ignoring unknown setting", extra={"fields": {"variable": name}})


def check_multiprocess_dir(environ: Mapping[str, str]) -> None:
    """prometheus-client writes every metric value under this directory: it must exist."""
    directory = environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if directory and not os.path.isdir(directory):
        raise SettingsError(
            [f"PROMETHEUS_MULTIPROC_DIR={directory!r} is invalid: expected an existing directory"]
        )


EXIT_CONFIG = 2


def load_settings_or_exit(
    environ: Mapping[str, str] | None = None, *, metrics_dir_must_exist: bool = True
) -> Settings:
    """Settings for a process about to serve; on a bad environment, one line per problem and exit 2.

    gunicorn's master creates the metrics directory itself, so it skips that check.
    """
    import sys

    env = os.environ if environ is None else environ
    try:
        settings = load_settings(env)
        if metrics_dir_must_exist:
            check_multiprocess_dir(env)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"hyperbytedb-proxy: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    return settings
