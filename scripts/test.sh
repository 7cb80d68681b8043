#!/usr/bin/env bash
# Set up (system packages, .venv with test tools) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k rename -x (-n 0: one process).
# Three workers on two cores: most tests wait on mounts, stores and devices, not the CPU;
# a module's tests stay in one worker (their shared mount is module-scoped).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest -n 3 --dist loadfile "$@"
