#!/usr/bin/env bash
# Lint and test Brook. Fast run by default (no tests marked slow); the full run with
# --full or when CI=true. Other arguments go to pytest, e.g. `scripts/test.sh tests/unit -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
full=false
pytest_args=()
for argument in "$@"; do
    case "$argument" in
        --full) full=true ;;
        *) pytest_args+=("$argument") ;;
    esac
done
if [ "${CI:-}" = "true" ]; then
    full=true
fi

bash scripts/setup.sh
"$python" -m ruff check .

marker=()
if [ "$full" = true ]; then
    marker=(-m "")  # overrides the "-m 'not slow'" in pyproject's addopts
fi

status=0
"$python" -m pytest "${marker[@]}" "${pytest_args[@]}" || status=$?
if [ "$status" -eq 5 ]; then
    echo "test: pytest collected no tests" >&2
    status=0
fi
exit "$status"
