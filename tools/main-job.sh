#!/usr/bin/env bash
# The main job: the default scenario's verify pipeline (k8-nosdn-istio, flavor
# mini) on the local sandbox, exactly as the Jenkins verify job runs it.
# Results land in ./results. Extra arguments go to `xci-cn run`.
# Real pods (the default) need root: as root the real node's Debian packages
# are installed when missing; otherwise the sandbox says in one line what it
# needs (or set XCI_CN_SANDBOX_PODS=simulated).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && [ "${XCI_CN_SANDBOX_PODS:-real}" = real ]; then
  tools/bootstrap.sh --node
else
  tools/bootstrap.sh
fi
exec .venv/bin/xci-cn run --scenario "${DEPLOY_SCENARIO:-k8-nosdn-istio}" \
  --flavor "${XCI_FLAVOR:-mini}" --results-dir results "$@"
