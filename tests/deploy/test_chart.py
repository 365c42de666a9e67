"""The Helm chart: renders, validates against Kubernetes 1.30, and matches the app.

The drift tests tie the chart to ``app.settings.Settings``: every setting must
reach the Deployment's env, be settable from values, and parse back into the
setting the proxy would see; values.yaml's defaults must be the app's defaults
and values.schema.json's types and bounds the model's.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import yaml

from app.addresses import HostPort
from app.settings import Settings, env_name, load_settings

from .conftest import BACKEND, CHART, POD_IP, HelmTemplate, Rendered, RenderError, SecretRef

# ---------------------------------------------------------------------------
# Settings <-> values: one row per field of Settings.
#   values path, a non-default value to set there, the env value it must render
# A new field in Settings fails test_every_setting_is_wired until it gets a row
# here and a line in templates/deployment.yaml.
# ---------------------------------------------------------------------------

VALUES_OF_FIELD: dict[str, tuple[str, Any, str | SecretRef]] = {
    "listen": ("server.port", 9000, "0.0.0.0:9000"),
    "public_paths": ("server.publicPaths", ["/write", "/query*"], "/write,/query*"),
    "admin_listen": ("server.adminPort", 8087, "0.0.0.0:8087"),
    "tls_cert_file": ("server.tls.existingSecret", "proxy-tls", "/etc/hyperbytedb-proxy/tls/tls.crt"),
    "tls_key_file": ("server.tls.existingSecret", "proxy-tls", "/etc/hyperbytedb-proxy/tls/tls.key"),
    "tls_client_ca_file": (
        "server.tls.clientCaSecret",
        "client-ca",
        "/etc/hyperbytedb-proxy/client-ca/ca.crt",
    ),
    "backend_tls": ("backend.tls.enabled", True, "true"),
    "backend_ca_file": ("backend.tls.caSecret", "db-ca", "/etc/hyperbytedb-proxy/backend-ca/ca.crt"),
    "backend_server_name": ("backend.tls.serverName", "db.svc", "db.svc"),
    "backend_client_cert_file": (
        "backend.tls.clientCertSecret",
        "proxy-client",
        "/etc/hyperbytedb-proxy/backend-client/tls.crt",
    ),
    "backend_client_key_file": (
        "backend.tls.clientCertSecret",
        "proxy-client",
        "/etc/hyperbytedb-proxy/backend-client/tls.key",
    ),
    "backend_tls_insecure": ("backend.tls.insecure", True, "true"),
    "backend_service": ("backend.service", "a.db.svc,b.db.svc", "a.db.svc,b.db.svc"),
    "backend_port": ("backend.port", 18086, "18086"),
    "discovery_interval_secs": ("discovery.intervalSecs", 7.5, "7.5"),
    "health_interval_secs": ("health.intervalSecs", 0.25, "0.25"),
    "health_path": ("health.path", "/ping", "/ping"),
    "health_timeout_ms": ("health.timeoutMs", 2500, "2500"),
    "health_rise": ("health.rise", 3, "3"),
    "health_fall": ("health.fall", 4, "4"),
    "request_timeout_secs": ("proxy.requestTimeoutSecs", 120, "120"),
    "connect_timeout_ms": ("proxy.connectTimeoutMs", 250, "250"),
    "hold_timeout_secs": ("proxy.holdTimeoutSecs", 0, "0"),
    "max_retries": ("retry.maxRetries", 5, "5"),
    "retry_on_timeout": ("retry.onTimeout", True, "true"),
    "retry_budget_percent": ("retry.budget.percent", 12.5, "12.5"),
    "retry_budget_min_per_sec": ("retry.budget.minPerSec", 2.5, "2.5"),
    "retry_budget_window_secs": ("retry.budget.windowSecs", 30, "30"),
    "outlier_consecutive_failures": ("outlier.consecutiveFailures", 0, "0"),
    "outlier_ejection_secs": ("outlier.ejectionSecs", 7.5, "7.5"),
    "outlier_max_ejected_percent": ("outlier.maxEjectedPercent", 34, "34"),
    "lb_policy": ("proxy.lbPolicy", "least_request", "least_request"),
    # 1000000 would print as 1e+06 without `int` in the template.
    "max_body_bytes": ("limits.maxBodyBytes", 1000000, "1000000"),
    "max_pending": ("limits.maxPending", 64, "64"),
    "max_buffered_bytes": ("limits.maxBufferedBytes", 1073741824, "1073741824"),
    "max_header_bytes": ("clients.maxHeaderBytes", 1048576, "1048576"),
    "max_headers": ("clients.maxHeaders", 200, "200"),
    "client_header_timeout_secs": ("clients.headerTimeoutSecs", 12.5, "12.5"),
    "client_body_timeout_secs": ("clients.bodyTimeoutSecs", 30, "30"),
    "send_timeout_secs": ("clients.sendTimeoutSecs", 120, "120"),
    "keepalive_timeout_secs": ("clients.keepAliveTimeoutSecs", 30, "30"),
    "trusted_proxies": ("clients.trustedProxies", ["10.0.0.0/8", "fd00::/8"], "10.0.0.0/8,fd00::/8"),
    "backend_max_header_bytes": ("limits.backendMaxHeaderBytes", 16384, "16384"),
    "backend_max_headers": ("limits.backendMaxHeaders", 50, "50"),
    "shutdown_grace_secs": ("shutdown.graceSecs", 12.5, "12.5"),
    "self_ip": ("selfIp", "10.1.2.3", "10.1.2.3"),
    "dns_nameservers": (
        "discovery.dnsNameservers",
        ["10.0.0.10", "10.0.0.11:5353"],
        "10.0.0.10,10.0.0.11:5353",
    ),
    "admin_token": ("admin.existingSecret", "proxy-admin", SecretRef("proxy-admin", "admin-token")),
    "peer_service": ("peers.service", "proxies.db.svc", "proxies.db.svc"),
    "peer_timeout_secs": ("peers.timeoutSecs", 2.5, "2.5"),
    "workers": ("server.workers", 4, "4"),
    "log_format": ("log.format", "json", "json"),
    "log_level": ("log.level", "warning", "warning"),
}

# Set by the chart itself from the worker count, not by a value of its own
# (test_several_workers_run_gunicorn covers it).
CHART_DERIVED = {"prometheus_multiproc_dir"}
FIELDS = [field for field in Settings.model_fields if field not in CHART_DERIVED]


def client_service(rendered: Rendered) -> dict[str, Any]:
    """The Service clients use (not the peers' headless one)."""
    services = [s for s in rendered.all("Service") if not s["metadata"]["name"].endswith("-peers")]
    assert len(services) == 1, rendered.kinds()
    return services[0]


def nested(path: str, value: Any) -> dict[str, Any]:
    """{"a.b": v} -> {"a": {"b": v}}"""
    result: Any = value
    for part in reversed(path.split(".")):
        result = {part: result}
    return result


def values_yaml() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def lookup(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


# ---------------------------------------------------------------------------
# Renders and Kubernetes schema validation
# ---------------------------------------------------------------------------


def test_chart_metadata() -> None:
    text = (CHART / "Chart.yaml").read_text()
    chart = yaml.safe_load(text)
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "hyperbytedb-proxy"
    assert chart["type"] == "application"
    # Quoted in the file, so that YAML never turns them into numbers.
    assert re.search(r'^version: "0\.1\.0"$', text, re.M)
    assert re.search(r'^appVersion: "0\.1\.0"$', text, re.M)


def test_default_install_renders_the_expected_objects(default_render: Rendered) -> None:
    assert sorted(default_render.kinds()) == sorted(
        ["ServiceAccount", "Service", "Service", "Deployment", "PodDisruptionBudget", "Pod"]
    )
    assert default_render.deployment["spec"]["replicas"] == 2
    assert default_render.container["image"] == "ghcr.io/hyperbytedb/hyperbytedb-proxy:0.1.0"
    assert "command" not in default_render.container  # the image's ENTRYPOINT
    for doc in default_render.docs:
        assert doc["metadata"]["namespace"] == "db", doc["kind"]


def test_full_render_has_every_optional_object(full_render: Rendered) -> None:
    assert sorted(full_render.kinds()) == sorted(
        [
            "ServiceAccount",
            "Secret",
            "Service",
            "Service",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
            "ConfigMap",
            "Pod",
        ]
    )
    # The HPA owns the replica count.
    assert "replicas" not in full_render.deployment["spec"]


@pytest.mark.parametrize("which", ["default", "full"])
def test_render_validates_against_kubernetes_1_30(
    which: str,
    default_render: Rendered,
    full_render: Rendered,
    kubernetes_validate: str,
    tmp_path: Path,
) -> None:
    rendered = default_render if which == "default" else full_render
    output = _validate(kubernetes_validate, rendered.text, tmp_path)
    # Only the Prometheus Operator's CRDs are unknown to the validator.
    for line in output.splitlines():
        if line.startswith("WARN"):
            crd = r"kind (ServiceMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1"
            assert re.search(crd, line), line


def test_helm_install_needs_only_backend_service(helm_template: HelmTemplate) -> None:
    result = helm_template.run("--set", "backend.service=db-headless.db.svc.cluster.local", backend=None)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------
# values.schema.json
# ---------------------------------------------------------------------------


def test_schema_is_draft_07() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "backend" in schema["required"]
    assert "service" in schema["properties"]["backend"]["required"]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-backend-service"),
        pytest.param(["--set-string", "backend.service="], id="empty-backend-service"),
        pytest.param(["--set-string", "backend.service=  "], id="blank-backend-service"),
    ],
)
def test_schema_requires_backend_service(helm_template: HelmTemplate, args: list[str]) -> None:
    result = helm_template.run(*args, backend=None)
    assert result.returncode != 0
    assert "backend.service" in result.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "replicaCount=two",
        "replicaCount=-1",
        "backend.port=http",
        "backend.port=70000",
        "server.port=abc",
        "server.workers=0",
        "service.port=eighty",
        "discovery.intervalSecs=fast",
        "health.intervalSecs=true",
        "health.timeoutMs=1.5s",
        "retry.maxRetries=many",
        "retry.onTimeout=yes",
        "limits.maxBodyBytes=25MiB",
        "shutdown.preStopSleepSecs=five",
        "log.format=xml",
        "log.level=verbose",
        "health.path=health",
        "autoscaling.enabled=sometimes",
        "metrics.serviceMonitor.enabled=1",
        "backend.sevice=typo",
        "server.adminPort=70000",
        "server.publicPaths=write",
        "backend.tls.enabled=maybe",
        "networkPolicy.enabled=sometimes",
    ],
)
def test_schema_rejects_wrong_values(helm_template: HelmTemplate, setting: str) -> None:
    result = helm_template.run("--set", setting)
    assert result.returncode != 0, f"{setting} was accepted"
    # The message names the offending key.
    assert setting.split("=")[0].rsplit(".", 1)[-1] in result.stderr, result.stderr


def test_schema_accepts_fractional_seconds_from_set(helm_template: HelmTemplate) -> None:
    # helm --set passes 0.5 as a string; the chart must still take it.
    rendered = helm_template.render("--set", "health.intervalSecs=0.5")
    assert rendered.env_value("HYPERBYTEDB_PROXY_HEALTH_INTERVAL_SECS") == "0.5"


# ---------------------------------------------------------------------------
# Drift between the chart and app.settings
# ---------------------------------------------------------------------------


def test_every_field_has_a_values_key() -> None:
    missing = sorted(set(FIELDS) - set(VALUES_OF_FIELD))
    assert not missing, (
        f"settings without a chart value: {missing} "
        "(add them to values.yaml, templates/deployment.yaml and VALUES_OF_FIELD)"
    )
    stale = sorted(set(VALUES_OF_FIELD) - set(FIELDS))
    assert not stale, f"VALUES_OF_FIELD names fields that Settings no longer has: {stale}"
    defaults = values_yaml()
    for path, _, _ in VALUES_OF_FIELD.values():
        lookup(defaults, path)  # KeyError: not in values.yaml


@pytest.mark.parametrize("field", FIELDS)
def test_every_setting_is_wired(field: str, helm_template: HelmTemplate, default_render: Rendered) -> None:
    """The setting's env var is in the Deployment, and its value follows values."""
    name = env_name(field)
    assert name in default_render.env, f"{name} ({field}) is not in the Deployment's env"
    default = default_render.env[name]

    path, value, expected = VALUES_OF_FIELD[field]
    rendered = helm_template.render(values=nested(path, value))
    assert rendered.env_value(name) == expected
    assert rendered.env[name] != default, f"setting {path} did not change {name}"

    # ...and the proxy reads it back as a setting different from its default.
    secrets = {expected: "t0ken"} if isinstance(expected, SecretRef) else None
    settings = load_settings(rendered.resolved_env(secrets))
    assert getattr(settings, field) != Settings.model_fields[field].default


def test_default_values_are_the_app_defaults(default_render: Rendered) -> None:
    """values.yaml repeats no default that differs from app/settings.py."""
    settings = load_settings(default_render.resolved_env())
    assert settings.backend_service == BACKEND
    assert settings.self_ip == POD_IP
    # Two replicas by default, so the replicas share exclusions through the chart's headless Service.
    assert settings.peer_service == "proxy-hyperbytedb-proxy-peers.db.svc"
    for field, info in Settings.model_fields.items():
        if field in {"backend_service", "self_ip", "peer_service"}:
            continue
        assert getattr(settings, field) == info.default, f"{field}: chart default differs from the app's"


def test_full_values_load_into_settings(full_render: Rendered) -> None:
    settings = load_settings(full_render.resolved_env())
    assert settings.listen == HostPort("::", 8086)
    assert settings.workers == 2
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cr3t-admin-token"
    assert settings.discovery_interval_secs == 2.5
    assert [str(server) for server in settings.dns_nameservers] == ["10.96.0.10:53", "10.96.0.11:5353"]
    assert settings.log_format == "json"


def _schema_node(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        node = node["properties"][part]
    resolved = dict(node)
    for ref in [node.get("$ref")] + [item.get("$ref") for item in node.get("allOf", [])]:
        if ref:
            resolved = {**schema["definitions"][ref.rsplit("/", 1)[-1]], **resolved}
    return resolved


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


@pytest.mark.parametrize("field", FIELDS)
def test_schema_matches_the_settings_model(field: str) -> None:
    """Types, enums and bounds of values.schema.json follow Settings."""
    info = Settings.model_fields[field]
    annotation = info.annotation
    path = VALUES_OF_FIELD[field][0]
    node = _schema_node(json.loads((CHART / "values.schema.json").read_text()), path)
    types = _types(node)

    if typing.get_origin(annotation) is typing.Literal:
        assert types == {"string"}
        assert set(node["enum"]) == set(typing.get_args(annotation))
        return
    if annotation is bool:
        assert types == {"boolean"}
        return
    if annotation is str or annotation == str | None:
        assert types == {"string"}
        return
    if annotation is int:
        assert types == {"integer"}
        integer = True
    elif annotation is float:
        assert "number" in types  # numeric strings are accepted too (helm --set)
        integer = False
    else:
        # Composite settings (listen, dns_nameservers, admin_token, trusted_proxies) are
        # covered by the render tests.
        composite = {
            "listen",
            "dns_nameservers",
            "admin_token",
            "trusted_proxies",
            "public_paths",
            "admin_listen",
        }
        assert field in composite, f"unhandled type {annotation}"
        return

    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            assert node.get("minimum") == bound.ge, f"{path}: minimum"
        elif isinstance(bound, annotated_types.Gt):
            if integer:
                assert node.get("minimum") == bound.gt + 1, f"{path}: minimum"
            else:
                assert node.get("exclusiveMinimum") == bound.gt, f"{path}: exclusiveMinimum"
        elif isinstance(bound, annotated_types.Le):
            assert node.get("maximum") == bound.le, f"{path}: maximum"


def test_admin_token_is_never_plain_text(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(values={"admin": {"token": "hunter2-token"}})
    ref = rendered.env_value("HYPERBYTEDB_PROXY_ADMIN_TOKEN")
    assert isinstance(ref, SecretRef)
    assert rendered.secret_data(ref.name)[ref.key] == "hunter2-token"
    assert "hunter2-token" not in yaml.safe_dump(rendered.deployment)
    # The pods roll when the token changes.
    annotations = rendered.deployment["spec"]["template"]["metadata"]["annotations"]
    other = helm_template.render(values={"admin": {"token": "another-token"}})
    other_annotations = other.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/secret"] != other_annotations["checksum/secret"]


def test_existing_admin_secret_is_referenced_not_created(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(
        values={
            "admin": {"existingSecret": "db-proxy-admin", "existingSecretKey": "token", "token": "ignored"}
        }
    )
    assert rendered.env_value("HYPERBYTEDB_PROXY_ADMIN_TOKEN") == SecretRef("db-proxy-admin", "token")
    assert rendered.all("Secret") == []


def test_listen_brackets_ipv6(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(values={"server": {"host": "::", "port": 8087}})
    assert rendered.env_value("HYPERBYTEDB_PROXY_LISTEN") == "[::]:8087"
    assert rendered.container["ports"] == [{"name": "http", "containerPort": 8087, "protocol": "TCP"}]


def test_extra_env_is_appended(full_render: Rendered) -> None:
    assert full_render.env["TZ"] == {"name": "TZ", "value": "UTC"}
    assert full_render.env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


# ---------------------------------------------------------------------------
# Pod: security, probes, shutdown, scheduling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "full"])
def test_restricted_security_context(which: str, default_render: Rendered, full_render: Rendered) -> None:
    rendered = default_render if which == "default" else full_render
    pod = rendered.pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0
    assert isinstance(pod["runAsGroup"], int) and pod["runAsGroup"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}

    container = rendered.container["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container["runAsUser"] == pod["runAsUser"]
    assert container["runAsGroup"] == pod["runAsGroup"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}

    assert rendered.pod_spec["automountServiceAccountToken"] is False
    assert rendered.one("ServiceAccount")["automountServiceAccountToken"] is False


def test_tmp_is_the_only_writable_path(default_render: Rendered, full_render: Rendered) -> None:
    for rendered in (default_render, full_render):
        mounts = rendered.container["volumeMounts"]
        assert mounts == [{"name": "tmp", "mountPath": "/tmp"}]
        volumes = {volume["name"]: volume for volume in rendered.pod_spec["volumes"]}
        assert "emptyDir" in volumes["tmp"]


def test_probes(default_render: Rendered) -> None:
    container = default_render.container
    assert container["ports"] == [{"name": "http", "containerPort": 8086, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    # A gap shorter than the hold window must not empty the Service.
    readiness = container["readinessProbe"]
    hold = float(default_render.env_value("HYPERBYTEDB_PROXY_HOLD_TIMEOUT_SECS"))
    assert readiness["periodSeconds"] * readiness["failureThreshold"] > hold


def _prestop_secs(rendered: Rendered) -> int:
    command = rendered.container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] in {"/bin/sleep", "sleep"}
    return int(command[1])


@pytest.mark.parametrize(
    ("values", "prestop", "grace"),
    [
        pytest.param({}, 5, 30, id="defaults"),
        pytest.param({"shutdown": {"preStopSleepSecs": 10, "graceSecs": 45}}, 10, 45, id="longer"),
        pytest.param({"shutdown": {"preStopSleepSecs": 3, "graceSecs": 12.5}}, 3, 12.5, id="fractional"),
    ],
)
def test_prestop_and_termination_grace(
    helm_template: HelmTemplate, values: dict[str, Any], prestop: int, grace: float
) -> None:
    rendered = helm_template.render(values=values)
    assert _prestop_secs(rendered) == prestop
    assert float(rendered.env_value("HYPERBYTEDB_PROXY_SHUTDOWN_GRACE_SECS")) == grace
    period = rendered.pod_spec["terminationGracePeriodSeconds"]
    assert isinstance(period, int)
    assert period > prestop + grace
    assert period >= prestop + math.ceil(grace) + 1


def test_prestop_can_be_disabled(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(values={"shutdown": {"preStopSleepSecs": 0}})
    assert "lifecycle" not in rendered.container
    assert rendered.pod_spec["terminationGracePeriodSeconds"] > 30


def test_termination_grace_override_must_cover_the_drain(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(values={"shutdown": {"terminationGracePeriodSeconds": 90}})
    assert rendered.pod_spec["terminationGracePeriodSeconds"] == 90
    with pytest.raises(RenderError, match="terminationGracePeriodSeconds"):
        helm_template.render(values={"shutdown": {"terminationGracePeriodSeconds": 35}})


def test_self_ip_from_downward_api(default_render: Rendered, full_render: Rendered) -> None:
    for rendered in (default_render, full_render):
        entry = rendered.env["HYPERBYTEDB_PROXY_SELF_IP"]
        assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_single_worker_runs_the_entrypoint(default_render: Rendered) -> None:
    assert "command" not in default_render.container
    assert "args" not in default_render.container
    assert "PROMETHEUS_MULTIPROC_DIR" not in default_render.env


def test_several_workers_run_gunicorn(full_render: Rendered) -> None:
    assert full_render.container["command"] == [
        "gunicorn",
        "-c",
        "/app/gunicorn.conf.py",
        "app.main:create_app_from_env()",
    ]
    multiproc = full_render.env_value("PROMETHEUS_MULTIPROC_DIR")
    assert isinstance(multiproc, str) and multiproc.startswith("/tmp/")
    assert full_render.env_value("HYPERBYTEDB_PROXY_WORKERS") == "2"


def test_resources_leave_room_for_buffered_bodies(default_render: Rendered) -> None:
    resources = default_render.container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    limit = resources["limits"]["memory"]
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", limit).groups()  # type: ignore[union-attr]
    buffered = int(default_render.env_value("HYPERBYTEDB_PROXY_MAX_BUFFERED_BYTES"))  # type: ignore[arg-type]
    assert int(number) * units[unit] > buffered


def test_spread_across_nodes_is_soft_by_default(default_render: Rendered) -> None:
    selector = default_render.deployment["spec"]["selector"]["matchLabels"]
    (spread,) = default_render.pod_spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == selector
    anti = default_render.pod_spec["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector


def test_pod_options_are_passed_through(full_render: Rendered) -> None:
    spec = full_render.pod_spec
    template = full_render.deployment["spec"]["template"]
    assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    assert template["metadata"]["annotations"]["example.com/team"] == "databases"
    assert "checksum/secret" in template["metadata"]["annotations"]
    assert template["metadata"]["labels"]["example.com/tier"] == "proxy"
    assert full_render.container["image"].startswith("ghcr.io/hyperbytedb/hyperbytedb-proxy@sha256:")


# ---------------------------------------------------------------------------
# Service, PDB, HPA, monitoring, helm test, NOTES
# ---------------------------------------------------------------------------


def test_service_targets_the_proxy_pods(default_render: Rendered) -> None:
    service = client_service(default_render)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8086, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]
    pod_labels = default_render.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert default_render.deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_pdb_follows_the_replica_count(helm_template: HelmTemplate, default_render: Rendered) -> None:
    pdb = default_render.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    selector = default_render.deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector

    single = helm_template.render(values={"replicaCount": 1})
    assert single.all("PodDisruptionBudget") == []
    off = helm_template.render(values={"podDisruptionBudget": {"enabled": False}})
    assert off.all("PodDisruptionBudget") == []
    percent = helm_template.render(values={"podDisruptionBudget": {"maxUnavailable": "50%"}})
    assert percent.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"


def test_hpa(full_render: Rendered) -> None:
    hpa = full_render.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": full_render.deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert full_render.one("PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": full_render.deployment["spec"]["selector"]["matchLabels"]},
    }


def test_service_monitor(full_render: Rendered) -> None:
    monitor = full_render.one("ServiceMonitor")
    service = client_service(full_render)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # It selects the Service by its labels, and scrapes its named port.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["db"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_prometheus_rule(full_render: Rendered) -> None:
    rule = full_render.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "HyperbytedbProxyNoActiveBackend",
        "HyperbytedbProxyRequestsFailing",
        "HyperbytedbProxyBackendsFlapping",
    }
    no_backend = alerts["HyperbytedbProxyNoActiveBackend"]["expr"]
    assert re.search(r"hyperbytedb_proxy_routable_backends\{[^}]*\}\) == 0", no_backend)
    failing = alerts["HyperbytedbProxyRequestsFailing"]["expr"]
    assert 'hyperbytedb_proxy_requests_total{outcome=~"exhausted|no_backend|overloaded"' in failing
    assert "hyperbytedb_proxy_health_transitions_total" in alerts["HyperbytedbProxyBackendsFlapping"]["expr"]
    for name, alert in alerts.items():
        # Scoped to this release's series.
        assert 'namespace="db"' in alert["expr"] and 'job="proxy-hyperbytedb-proxy"' in alert["expr"], name
        assert alert["expr"].count("(") == alert["expr"].count(")"), name
        assert alert["expr"].count("{") == alert["expr"].count("}"), name
        assert re.fullmatch(r"\d+[smh]", alert["for"]), name
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert alert["labels"]["team"] == "databases", name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        # Prometheus templates survive Helm's templating.
        assert "{{ $labels." in alert["annotations"]["summary"], name


def test_helm_test_pod(default_render: Rendered) -> None:
    (pod,) = [doc for doc in default_render.all("Pod")]
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert pod["spec"]["restartPolicy"] == "Never"
    script = " ".join(pod["spec"]["containers"][0]["command"])
    service = client_service(default_render)
    assert f"http://{service['metadata']['name']}.db.svc:8086/healthz" in script
    # The Service must not send traffic to the test pod.
    assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_notes(default_render: Rendered) -> None:
    assert "/admin/backends" in default_render.notes
    assert "port-forward svc/proxy-hyperbytedb-proxy 8086:8086" in default_render.notes
    assert "http://proxy-hyperbytedb-proxy.db.svc:8086" in default_render.notes


def test_alert_expressions_use_only_exported_metrics(full_render: Rendered) -> None:
    """An alert on a metric the proxy no longer exports would never fire."""
    from app.metrics import Metrics

    exported = {sample.name for family in Metrics().registry.collect() for sample in family.samples}
    # A labelled counter with no children yet has no samples: count the family's name too.
    families = list(Metrics().registry.collect())
    exported |= {family.name + ("_total" if family.type == "counter" else "") for family in families}
    used = set(re.findall(r"hyperbytedb_proxy_[a-z_]+", full_render.text))
    assert used and used <= exported, used - exported


# ---------------------------------------------------------------------------
# Peer replicas: exclusions for the whole fleet
# ---------------------------------------------------------------------------


def peers_service(rendered: Rendered) -> dict[str, Any] | None:
    found = [s for s in rendered.all("Service") if s["metadata"]["name"].endswith("-peers")]
    return found[0] if found else None


def test_two_replicas_share_exclusions_through_a_headless_service(default_render: Rendered) -> None:
    service = peers_service(default_render)
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == default_render.deployment["spec"]["selector"]["matchLabels"]
    name = service["metadata"]["name"]
    assert default_render.env_value("HYPERBYTEDB_PROXY_PEER_SERVICE") == f"{name}.db.svc"


@pytest.mark.parametrize(
    ("values", "wired"),
    [
        pytest.param({"replicaCount": 1}, False, id="one-replica"),
        pytest.param({"replicaCount": 1, "autoscaling": {"enabled": True}}, True, id="hpa"),
        pytest.param({"replicaCount": 3, "peers": {"enabled": False}}, False, id="disabled"),
    ],
)
def test_peer_service_follows_the_replica_count(
    helm_template: HelmTemplate, values: dict[str, Any], wired: bool
) -> None:
    rendered = helm_template.render(values=values)
    assert (peers_service(rendered) is not None) is wired
    assert bool(rendered.env_value("HYPERBYTEDB_PROXY_PEER_SERVICE")) is wired


def test_a_given_peer_service_is_used_as_is(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(values={"peers": {"service": "proxies.other.svc"}})
    assert peers_service(rendered) is None
    assert rendered.env_value("HYPERBYTEDB_PROXY_PEER_SERVICE") == "proxies.other.svc"


# ---------------------------------------------------------------------------
# Grafana dashboard
# ---------------------------------------------------------------------------


def test_dashboard_configmap_is_off_by_default(default_render: Rendered) -> None:
    assert "ConfigMap" not in default_render.kinds()


def test_dashboard_configmap_carries_the_dashboard_for_the_sidecar(full_render: Rendered) -> None:
    config_map = full_render.one("ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Databases"}
    shipped = json.loads((CHART / "dashboards" / "hyperbytedb-proxy.json").read_text())
    assert json.loads(config_map["data"]["hyperbytedb-proxy.json"]) == shipped
    # deploy/grafana/ offers the same file to those who import it by hand.
    standalone = CHART.parents[1] / "deploy" / "grafana" / "hyperbytedb-proxy.json"
    assert json.loads(standalone.read_text()) == shipped


# ---------------------------------------------------------------------------
# Security: admin port, TLS Secrets, NetworkPolicy
# ---------------------------------------------------------------------------

SECURE_VALUES: dict[str, Any] = {
    "server": {"adminPort": 8087, "tls": {"existingSecret": "proxy-tls"}},
    "backend": {
        "tls": {
            "enabled": True,
            "caSecret": "db-ca",
            "serverName": "hyperbytedb-headless.db.svc.cluster.local",
            "clientCertSecret": "proxy-client",
        }
    },
    "networkPolicy": {"enabled": True, "adminNamespaceLabels": {"team": "monitoring"}},
    "metrics": {"serviceMonitor": {"enabled": True, "tlsConfig": {"insecureSkipVerify": False}}},
}


def _validate(kubernetes_validate: str, text: str, tmp_path: Path) -> str:
    """Rendered manifests pass kubernetes-validate --strict against the 1.30 schemas."""
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(text)
    result = subprocess.run(
        [kubernetes_validate, "-k", "1.30.0", "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "ERROR" not in output, output
    return output


@pytest.mark.parametrize("admin_port", [0, 8087])
@pytest.mark.parametrize("listener_tls", ["", "proxy-tls"])
@pytest.mark.parametrize("client_ca", ["", "client-ca"])
@pytest.mark.parametrize("backend_tls", [False, True])
def test_security_combinations_render_and_validate(
    helm_template: HelmTemplate,
    kubernetes_validate: str,
    tmp_path: Path,
    admin_port: int,
    listener_tls: str,
    client_ca: str,
    backend_tls: bool,
) -> None:
    values = {
        "server": {
            "adminPort": admin_port,
            "tls": {"existingSecret": listener_tls, "clientCaSecret": client_ca},
        },
        "backend": {"tls": {"enabled": backend_tls, "caSecret": "db-ca" if backend_tls else ""}},
        "networkPolicy": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}},
    }
    rendered = helm_template.render(values=values)
    _validate(kubernetes_validate, rendered.text, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    probe_port = "admin" if admin_port else "http"
    assert ("admin" in ports) == bool(admin_port)
    readiness = rendered.container["readinessProbe"]
    if client_ca:
        assert readiness["tcpSocket"]["port"] == probe_port
    else:
        assert readiness["httpGet"]["port"] == probe_port
        assert readiness["httpGet"].get("scheme", "HTTP") == ("HTTPS" if listener_tls else "HTTP")
    endpoint = rendered.one("ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == probe_port
    assert endpoint["scheme"] == ("https" if listener_tls else "http")
    service_ports = [p["name"] for p in client_service(rendered)["spec"]["ports"]]
    assert service_ports == (["http", "admin"] if admin_port else ["http"])


def test_tls_secrets_are_mounted_read_only(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(values=SECURE_VALUES)
    mounts = {m["name"]: m for m in rendered.container["volumeMounts"]}
    for name in ("tls", "backend-ca", "backend-client"):
        assert mounts[name]["readOnly"] is True
        assert mounts[name]["mountPath"] == f"/etc/hyperbytedb-proxy/{name}"
        assert "subPath" not in mounts[name]  # a subPath mount would never see a renewal
    volumes = {v["name"]: v for v in rendered.pod_spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "proxy-tls"
    assert volumes["backend-client"]["secret"]["secretName"] == "proxy-client"
    assert rendered.env_value("HYPERBYTEDB_PROXY_ADMIN_LISTEN") == "0.0.0.0:8087"


def test_network_policy_admits_admin_port_only_from_labelled_namespaces(helm_template: HelmTemplate) -> None:
    policy = helm_template.render(values=SECURE_VALUES).one("NetworkPolicy")
    public, admin = policy["spec"]["ingress"]
    assert public["ports"] == [{"port": "http", "protocol": "TCP"}] and "from" not in public
    assert admin["ports"] == [{"port": "admin", "protocol": "TCP"}]
    selectors = [peer["namespaceSelector"]["matchLabels"] for peer in admin["from"]]
    assert any(selector.get("team") == "monitoring" for selector in selectors)  # merged with the default
    assert {"kubernetes.io/metadata.name": "db"} in selectors
    assert helm_template.render().all("NetworkPolicy") == []


def test_helm_test_pod_follows_the_admin_port_and_tls(helm_template: HelmTemplate) -> None:
    rendered = helm_template.render(values=SECURE_VALUES)
    (pod,) = rendered.all("Pod")
    script = " ".join(pod["spec"]["containers"][0]["command"])
    name = client_service(rendered)["metadata"]["name"]
    assert f"https://{name}.db.svc:8087/healthz" in script
    mtls = helm_template.render(values={"server": {"tls": {"existingSecret": "t", "clientCaSecret": "ca"}}})
    (pod,) = mtls.all("Pod")
    assert "create_connection" in " ".join(pod["spec"]["containers"][0]["command"])
