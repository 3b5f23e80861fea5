#!/usr/bin/env bash
# Create or reuse the virtualenv in .venv and install xci-cn with its test
# tools; install the Debian packages the tests need when they are missing.
# Idempotent: a second run with nothing changed takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.xci-cn-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing xci-cn and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi

# Debian packages (only with an option and as root, so a developer's laptop
# is never changed behind their back): --node, what the sandbox's real node
# needs (runc and the CNI plugins come from Debian: bookworm's runc 1.1.5 and
# plugins 1.1.1 run it, see docs/architecture.rst); --system, that and what
# the tests use.
node_packages=("runc:runc" "iptables:iptables" "conntrack:conntrack" "ip:iproute2"
               "/usr/lib/cni/bridge:containernetworking-plugins")
test_packages=("prometheus:prometheus" "chromium:chromium" "chromedriver:chromium-driver")
case "${1:-}" in
  --system) wanted=("${node_packages[@]}" "${test_packages[@]}") ;;
  --node) wanted=("${node_packages[@]}") ;;
  *) wanted=() ;;
esac
if [ ${#wanted[@]} -gt 0 ]; then
  missing=()
  for pair in "${wanted[@]}"; do
    if [ "${pair:0:1}" = / ]; then
      [ -x "${pair%%:*}" ] || missing+=("${pair#*:}")
    else
      command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "bootstrap: apt-get install ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "bootstrap: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
      exit 3
    fi
  fi
fi
