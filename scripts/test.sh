#!/usr/bin/env bash
# The one test command (README, .ci/run): install what is missing, then ruff, mypy and pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k config -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/ruff check win_automation workflows tests benchmarks
.venv/bin/mypy
exec .venv/bin/pytest "$@"
