#!/usr/bin/env bash
# The main job: the default scenario's verify pipeline (k8-nosdn-istio, flavor
# mini) on the local sandbox, exactly as the Jenkins verify job runs it.
# Results land in ./results. Extra arguments go to `xci-cn run`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
exec .venv/bin/xci-cn run --scenario "${DEPLOY_SCENARIO:-k8-nosdn-istio}" \
  --flavor "${XCI_FLAVOR:-mini}" --results-dir results "$@"
