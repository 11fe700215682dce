#!/usr/bin/env bash
# The one test command (README, .ci/run): install what is missing, then ruff, mypy, the layering
# contracts (import-linter, see pyproject.toml) and pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k config -x` (`-n 0`: one process).
# Two pytest-xdist workers, a test file to each at a time (module fixtures start once): the suite
# waits on processes and sockets more than it computes, so two workers halve it on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/ruff check win_automation workflows tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null || .venv/bin/lint-imports --no-cache
exec .venv/bin/pytest -n 2 --dist loadfile "$@"
