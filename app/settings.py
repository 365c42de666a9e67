"""Configuration from the environment, validated once at startup.

Every setting has the ``HYPERBYTEDB_PROXY_`` prefix except ``LOG_FORMAT`` and
``LOG_LEVEL`` (either spelling works) and ``PROMETHEUS_MULTIPROC_DIR`` (the
name prometheus-client itself reads).  pydantic-settings' environment source
reads the variables; a blank value counts as unset.  A bad value raises
:class:`SettingsError` with one line per problem naming the variable, the
value given and what was expected; printing and exiting are the command
line's business (:mod:`app.__main__`).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.addresses import HostPort, parse_host_port, parse_nameservers

ENV_PREFIX = "HYPERBYTEDB_PROXY_"
DEFAULT_PUBLIC_PATHS = ("/write", "/query", "/ping", "/health", "/health/ready", "/api/v1/*")


def parse_public_paths(value: str) -> tuple[str, ...]:
    """Parse the public path list: ``/exact``, ``/prefix/*``, or ``*`` alone for every path."""
    paths = tuple(filter(None, (part.strip() for part in value.split(","))))
    if not paths:
        raise ValueError("expected one or more paths, comma-separated, or '*'")
    for path in paths:
        if path == "*":
            continue
        if not path.startswith("/"):
            raise ValueError(f"{path!r} does not start with '/'")
        if "*" in path[:-1]:
            raise ValueError(f"{path!r}: '*' is only allowed at the end")
    return paths


class Settings(BaseSettings):
    """Everything the proxy can be told; immutable once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        # Kubernetes and shells spell variables in upper case; nobody means
        # two different settings by two spellings of one name.
        case_sensitive=False,
        validate_by_name=True,
        # Manifests often render an optional variable as an empty string.
        env_ignore_empty=True,
    )

    listen: Annotated[HostPort, NoDecode] = Field(
        default=HostPort("0.0.0.0", 8086),
        description="Address and port for client and admin traffic.",
    )
    public_paths: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_PUBLIC_PATHS,
        description="Comma-separated paths forwarded to the backends (a trailing '*' matches a prefix, "
        "'*' alone forwards everything); any other path gets 404 from the proxy.",
    )
    admin_listen: Annotated[HostPort | None, NoDecode] = Field(
        default=None,
        description="Address and port of a separate admin listener (/healthz, /readyz, /metrics, /admin); "
        "unset: the admin routes share LISTEN.",
    )
    tls_cert_file: str | None = Field(
        default=None, description="PEM certificate chain served on the listener(s); enables TLS."
    )
    tls_key_file: str | None = Field(
        default=None, validate_default=True, description="PEM private key of TLS_CERT_FILE."
    )
    tls_client_ca_file: str | None = Field(
        default=None, description="PEM CA bundle; when set, clients must present a certificate it signed."
    )
    backend_service: str = Field(
        description="DNS name(s) of the HyperbyteDB headless Service, comma-separated; "
        "IP literals and /etc/hosts names work too.",
    )
    backend_port: int = Field(default=8086, ge=1, le=65535, description="Port on every backend.")
    backend_tls: bool = Field(default=False, description="Connect to the backends (and probe them) over TLS.")
    backend_ca_file: str | None = Field(
        default=None,
        description="PEM CA bundle that backend certificates must chain to (default: system store).",
    )
    backend_server_name: str | None = Field(
        default=None,
        description="Name verified in, and sent as SNI to, every backend's certificate "
        "(default: the first name of BACKEND_SERVICE).",
    )
    backend_client_cert_file: str | None = Field(
        default=None, description="PEM client certificate presented to the backends (mutual TLS)."
    )
    backend_client_key_file: str | None = Field(
        default=None, validate_default=True, description="PEM private key of BACKEND_CLIENT_CERT_FILE."
    )
    backend_tls_insecure: bool = Field(
        default=False,
        description="Skip verifying backend certificates (warned at startup; never in production).",
    )
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
    retry_budget_min_per_sec: float = Field(
        default=10,
        ge=0,
        description="Retries per second always allowed, however quiet the proxy (times the window length).",
    )
    retry_budget_window_secs: float = Field(
        default=10, gt=0, description="Length of the sliding window of the retry budget."
    )
    outlier_consecutive_failures: int = Field(
        default=5,
        ge=0,
        description="Failed forwards in a row that eject a backend from routing; 0 turns ejection off.",
    )
    outlier_ejection_secs: float = Field(
        default=30,
        gt=0,
        description="How long a first ejection lasts; doubled on each repeat, capped at 10x.",
    )
    outlier_max_ejected_percent: int = Field(
        default=50, ge=0, le=100, description="Most backends ejected at once, as a share of the known ones."
    )
    lb_policy: Literal["round_robin", "least_request"] = Field(
        default="round_robin",
        description="How a backend is chosen among the routable ones.",
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
    max_header_bytes: int = Field(
        default=65_536,
        ge=1024,
        description="Largest request head (request line and headers) accepted (431 above it).",
    )
    max_headers: int = Field(default=100, ge=1, description="Most request headers accepted (431 above it).")
    client_header_timeout_secs: float = Field(
        default=60,
        gt=0,
        description="Longest wait for a whole request head (a new connection's first one included).",
    )
    client_body_timeout_secs: float = Field(
        default=60, gt=0, description="Longest silence between two reads of a request body."
    )
    send_timeout_secs: float = Field(
        default=60,
        gt=0,
        description="Longest time a client may leave its response unread before it is disconnected.",
    )
    keepalive_timeout_secs: int = Field(
        default=75, ge=1, description="How long an idle client connection is kept open between requests."
    )
    trusted_proxies: Annotated[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated CIDRs of forwarders whose X-Forwarded-* headers are believed.",
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
    peer_service: str | None = Field(
        default=None,
        description="DNS name of the proxy's own pods (a headless Service): exclusions reach every replica.",
    )
    peer_timeout_secs: float = Field(
        default=10,
        gt=0,
        description="Longest wait for every peer replica to apply an exclusion, and for a peer's "
        "exclusions at start.",
    )
    workers: int = Field(default=1, ge=1, description="Worker processes when served by gunicorn.")
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR"),
        description="Directory where every gunicorn worker keeps its metric values and the shared "
        "operator exclusions.",
    )
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
        # Arguments, then the environment: no .env or secrets-directory files,
        # which a container would read behind the operator's back.
        return (init_settings, env_settings)

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

    @field_validator("public_paths", mode="before")
    @classmethod
    def _parse_public_paths(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return parse_public_paths(value)

    @field_validator("admin_listen", mode="before")
    @classmethod
    def _parse_admin_listen(cls, value: Any) -> Any:
        return parse_host_port(value) if isinstance(value, str) else value

    @field_validator("admin_listen")
    @classmethod
    def _admin_listen_apart(cls, value: HostPort | None, info: ValidationInfo) -> HostPort | None:
        listen = info.data.get("listen")
        if value is not None and listen is not None and value.port == listen.port:
            raise ValueError(
                f"must use another port than {ENV_PREFIX}LISTEN={listen} "
                "(the listeners are told apart by port)"
            )
        return value

    @field_validator(
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "backend_ca_file",
        "backend_client_cert_file",
        "backend_client_key_file",
    )
    @classmethod
    def _blank_path_is_none(cls, value: str | None) -> str | None:
        # The files themselves are loaded (and errors named) by app.tls at startup.
        return value.strip() if value and value.strip() else None

    @field_validator("tls_key_file", "backend_client_key_file")
    @classmethod
    def _key_needs_cert(cls, value: str | None, info: ValidationInfo) -> str | None:
        cert_field = "tls_cert_file" if info.field_name == "tls_key_file" else "backend_client_cert_file"
        if (value is None) != (info.data.get(cert_field) is None) and cert_field in info.data:
            raise ValueError(f"must be set together with {ENV_PREFIX}{cert_field.upper()}")
        return value

    @field_validator("backend_server_name")
    @classmethod
    def _blank_name_is_none(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

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

    @field_validator("peer_service")
    @classmethod
    def _blank_peer_service_is_none(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "," in value or any(c.isspace() for c in value.strip()):
            raise ValueError("expected one DNS name")
        return value.strip()

    @field_validator("self_ip")
    @classmethod
    def _check_self_ip(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return str(ipaddress.ip_address(value.strip()))

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _parse_nameservers(cls, value: Any) -> Any:
        return parse_nameservers(value) if isinstance(value, str) else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        items = filter(None, (part.strip() for part in value.split(",")))
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(self.backend_service.split(","))

    @property
    def backend_tls_name(self) -> str:
        """The name backend certificates are checked against and sent as SNI."""
        return self.backend_server_name or self.backend_names[0]

    @property
    def admin_open(self) -> bool:
        """The operator API needs no token: it is on its own listener and none is set (upstream's way)."""
        return self.admin_token is None and self.admin_listen is not None

    @property
    def listener_tls(self) -> bool:
        return self.tls_cert_file is not None


class SettingsError(Exception):
    """Raised with one human-readable line per invalid or missing variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``.

    Values of only blanks count as unset too, like empty ones.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = {key: value for key, value in environ.items() if value.strip()}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return self._environ
        return {key.lower(): value for key, value in self._environ.items()}


def env_names(field: str) -> tuple[str, ...]:
    """Every environment variable that sets a field, the documented one first."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (ENV_PREFIX + field.upper(),)


def env_name(field: str) -> str:
    """The documented environment variable that sets a field."""
    return env_names(field)[0]


def _describe(error: ErrorDetails, given: Set[str]) -> str:
    """One line naming the variable as the operator spelled it, its raw value and the problem."""
    key = str(error["loc"][0]) if error["loc"] else ""
    expected = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    field = _field_of(key)
    if field is None:
        return f"{key or 'settings'}: {expected}"
    names = env_names(field)
    name = next((name for name in names if name.upper() in given), names[0])
    if error["type"] == "missing":
        return f"{name} is required: {Settings.model_fields[field].description}"
    return f"{name}={error['input']!r} is invalid: {expected}"


def _field_of(key: str) -> str | None:
    """The field behind a validation error's location: a field name or one of its variables."""
    if key.lower() in Settings.model_fields:
        return key.lower()
    return next((field for field in Settings.model_fields if key.upper() in env_names(field)), None)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default: the process environment), the only source.

    Raises :class:`SettingsError` listing every problem, so one restart fixes them all.
    """
    env = os.environ if environ is None else environ
    source = MappingEnvSource(Settings, env)
    try:
        # Only this source: the default chain would read os.environ as well.
        return Settings(_build_sources=((source,), {}))
    except ValidationError as exc:
        given = {key.upper() for key in env}
        raise SettingsError([_describe(err, given) for err in exc.errors()]) from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Prefixed variables that match no setting: usually a typo worth a warning."""
    known = {name.upper() for field in Settings.model_fields for name in env_names(field)}
    known |= {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    return sorted(key for key in environ if key.upper().startswith(ENV_PREFIX) and key.upper() not in known)
