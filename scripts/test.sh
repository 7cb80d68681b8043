#!/usr/bin/env bash
# Set up (system packages, .venv with test tools) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k rename -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
