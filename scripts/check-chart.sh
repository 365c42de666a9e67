#!/usr/bin/env bash
# Render the Helm chart and validate it against the Kubernetes 1.30 schemas,
# outside pytest (tests/deploy/test_chart.py does the same and much more).
#
#   scripts/check-chart.sh            render + validate, print a summary
#   KEEP=1 scripts/check-chart.sh     keep the rendered manifests and say where
#
# Needs: ../shared/tools/helm-template (built here; it apt-installs Debian's Go
# packages when missing) and the pip package kubernetes-validate (looked up in
# .venv first, then on PATH).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo/helm/hyperbytedb-proxy"
build="$repo/../shared/tools/helm-template/build.sh"

validate="$repo/.venv/bin/kubernetes-validate"
[ -x "$validate" ] || validate="$(command -v kubernetes-validate || true)"
if [ -z "$validate" ]; then
  echo "check-chart: kubernetes-validate not found: pip install 'kubernetes-validate==1.37.0'" >&2
  exit 1
fi

out="$(mktemp -d)"
if [ "${KEEP:-0}" = 1 ]; then
  echo "check-chart: output kept in $out" >&2
else
  trap 'rm -rf "$out"' EXIT
fi

ht="$out/helm-template"
bash "$build" "$ht"

passed=0 failed=0
check() {  # check NAME COMMAND...: run, count, show its output on failure
  local name="$1"; shift
  if "$@" >"$out/$name.log" 2>&1; then
    passed=$((passed + 1)); echo "ok    $name"
  else
    failed=$((failed + 1)); echo "FAIL  $name"; sed 's/^/      /' "$out/$name.log"
  fi
}
render() {  # render FILE ARGS...: helm-template into $out/FILE (stdout only)
  local file="$1"; shift
  "$ht" proxy "$chart" --namespace db "$@" >"$out/$file"
}
refused() {  # the render must fail
  ! "$ht" proxy "$chart" --namespace db "$@"
}

# 1. What `helm install --set backend.service=...` creates, and a render with
#    every optional feature on (HPA, PDB, ServiceMonitor, PrometheusRule,
#    admin Secret, 2 gunicorn workers, extra env).
check render-default render default.yaml --set backend.service=db-headless.db.svc.cluster.local
check render-full render full.yaml -f "$chart/ci/full-values.yaml"

# 2. Kubernetes 1.30 schemas, strict (unknown fields are errors). The
#    ServiceMonitor and PrometheusRule CRDs are unknown to the validator: WARN.
check validate-default "$validate" -k 1.30.0 --strict --quiet "$out/default.yaml"
check validate-full "$validate" -k 1.30.0 --strict --quiet "$out/full.yaml"

# 3. values.schema.json refuses a release without a backend and a mistyped value.
check refuses-missing-backend refused
check refuses-wrong-type refused --set backend.service=db-headless --set backend.port=http

grep -h '^WARN' "$out"/validate-*.log 2>/dev/null | sed 's/^/note: /' || true
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
