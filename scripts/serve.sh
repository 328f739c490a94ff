#!/usr/bin/env bash
# One command to set up and run the service with the shipped models:
#   ./scripts/serve.sh [segserve serve options, e.g. --port 8000 --device cpu]
# Creates .venv at the project root and installs the runtime only (no torch).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/segserve serve "$@"
