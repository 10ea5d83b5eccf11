#!/usr/bin/env bash
# The Model Zoo's format checks (black, isort, flake8 with the zoo's settings: setup.cfg) on bundle/.
# Installs the pinned checkers (requirements-format.txt) into .venv first (a no-op once there).
#   bash scripts/check_format.sh          # check only (what CI runs)
#   bash scripts/check_format.sh --fix    # reformat bundle/ in place (isort, then black), then check
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BLACK_ARGS=(--line-length 120 --skip-magic-trailing-comma)
"$PY" -m pip install --quiet --disable-pip-version-check -r requirements-format.txt || exit 1
if [ "${1:-}" = "--fix" ]; then
  "$PY" -m isort bundle
  "$PY" -m black "${BLACK_ARGS[@]}" bundle
fi
status=0
echo "black $("$PY" -m black --version | head -1)"
"$PY" -m black "${BLACK_ARGS[@]}" --check bundle || status=1
echo "isort $("$PY" -m isort --version-number)"
"$PY" -m isort --check-only --diff bundle || status=1
echo "flake8 $("$PY" -m flake8 --version | head -1)"
"$PY" -m flake8 bundle --count --statistics || status=1
[ $status -eq 0 ] && echo "format checks passed" || echo "format checks FAILED: bash scripts/check_format.sh --fix"
exit $status
