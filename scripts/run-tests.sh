#!/usr/bin/env bash
# The whole test suite: lint, the audit of known vulnerabilities in the installed packages, then
# pytest against the local services, which it starts if they are installed but stopped and stops
# again afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/local-services.sh start || exit 1
trap 'scripts/local-services.sh stop' EXIT
.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy . || exit 1
.venv/bin/python scripts/audit.py || exit 1
.venv/bin/pytest "$@"
