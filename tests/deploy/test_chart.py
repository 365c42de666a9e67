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

from app.settings import HostPort, Settings, env_name, load_settings

from .conftest import BACKEND, CHART, POD_IP, HelmTemplate, Rendered, RenderError, SecretRef

# ---------------------------------------------------------------------------
# Settings <-> values: one row per field of Settings.
#   values path, a non-default value to set there, the env value it must render
# A new field in Settings fails test_every_setting_is_wired until it gets a row
# here and a line in templates/deployment.yaml.
# ---------------------------------------------------------------------------

VALUES_OF_FIELD: dict[str, tuple[str, Any, str | SecretRef]] = {
    "listen": ("server.port", 9000, "0.0.0.0:9000"),
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
    "retry_budget_min_retries": ("retry.budget.minRetries", 3, "3"),
    "retry_budget_window_secs": ("retry.budget.windowSecs", 30, "30"),
    # 1000000 would print as 1e+06 without `int` in the template.
    "max_body_bytes": ("limits.maxBodyBytes", 1000000, "1000000"),
    "max_pending": ("limits.maxPending", 64, "64"),
    "max_buffered_bytes": ("limits.maxBufferedBytes", 1073741824, "1073741824"),
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
    "workers": ("server.workers", 4, "4"),
    "log_format": ("log.format", "json", "json"),
    "log_level": ("log.level", "warning", "warning"),
}

FIELDS = list(Settings.model_fields)


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
        ["ServiceAccount", "Service", "Deployment", "PodDisruptionBudget", "Pod"]
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
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "PrometheusRule",
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
    manifest = tmp_path / f"{which}.yaml"
    manifest.write_text(rendered.text)
    result = subprocess.run(
        [kubernetes_validate, "-k", "1.30.0", "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output, output
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
    for field, info in Settings.model_fields.items():
        if field in {"backend_service", "self_ip"}:
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
        # Composite settings (listen, dns_nameservers, admin_token) are
        # covered by the render tests.
        assert field in {"listen", "dns_nameservers", "admin_token"}, f"unhandled type {annotation}"
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
    service = default_render.one("Service")
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
    service = full_render.one("Service")
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
    service = default_render.one("Service")
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
