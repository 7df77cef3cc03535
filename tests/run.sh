#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine, then
# runs every test. Tests start their own Prometheus/Alertmanager on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v kubectl >/dev/null 2>&1 || echo "note: kubectl not found; the kubectl tests will say how to install it" >&2
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # The packages' own services are not wanted: tests run private instances.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $SUDO pkill -x prometheus 2>/dev/null || true
  $SUDO pkill -x prometheus-alertmanager 2>/dev/null || true
fi

cargo test --locked "$@"
