#!/usr/bin/env bash
# Debian packages the test suite drives for real: wrk and nginx (benchmark
# smoke), influxd (the real-server fault scenario), chromium (status page),
# node (the status page script's unit tests).
# Installs what is missing when run as root; otherwise says what is missing.
set -euo pipefail

declare -A wanted=([wrk]=wrk [nginx]=nginx-light [curl]=curl [influxd]=influxdb [chromium]=chromium [node]=nodejs [npm]=npm)
missing=()
for cmd in "${!wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
