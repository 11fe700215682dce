#!/usr/bin/env bash
# The one test command (README, .ci/run): install what is missing, then ruff, mypy, the layering
# contracts (import-linter, see pyproject.toml) and pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k config -x` (`-n 0`: one process).
# Three pytest-xdist workers, a test file to each at a time (module fixtures start once): the
# suite waits on processes, sockets and timeouts more than it computes (two workers kept 2 cores
# 56% busy, 8 min; three: 70%, 6 min).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/ruff check win_automation workflows tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
exec .venv/bin/pytest -n 3 --dist loadfile "$@"
