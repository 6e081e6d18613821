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

# Lint, types (mypy) and the layering contracts (import-linter), configured in
# pyproject.toml. All three run, so one pass shows every finding; tests run only when
# they pass.
lint_failed=()
"$python" -m ruff check . || lint_failed+=(ruff)
"$python" -m mypy || lint_failed+=(mypy)
# import-linter has no `python -m` entry point: run its command in the same interpreter.
"$python" -c 'import sys; from importlinter.cli import lint_imports_command
sys.exit(lint_imports_command())' --no-logo || lint_failed+=(import-linter)
if [ "${#lint_failed[@]}" -gt 0 ]; then
    echo "test: failed: ${lint_failed[*]} (see above); tests not run" >&2
    exit 1
fi

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
