#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up .venv, build (or verify the
# cached) sandbox binaries, lint (ruff), check the layers (lint-imports, the
# contracts in setup.cfg) and the types (mypy), then pytest. Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh --system
.venv/bin/xci-cn sandbox build >/dev/null
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/mypy
# The 30 slowest tests are listed at the end: where the suite's time goes.
exec .venv/bin/pytest --durations=30 "$@"
