#!/usr/bin/env bash
# One command to set up and run the tests:  ./scripts/test.sh [pytest args]
# Creates .venv at the project root and installs the service with the train and dev extras
# (torch==2.13.0 CPU comes from the local wheel pip is configured to find).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# onnxruntime-gpu and onnxruntime must never share an environment.
if .venv/bin/python -m pip show --quiet onnxruntime >/dev/null 2>&1; then
  echo "error: plain onnxruntime is installed next to onnxruntime-gpu" >&2
  exit 1
fi
# Browser tests drive Debian's chromium (Playwright cannot download a browser here).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  # Exit 5 = no tests collected: fine for a filter that matches nothing, an error for the full suite.
  if [ "$#" -gt 0 ]; then
    echo "pytest: no tests matched the given arguments"
    exit 0
  fi
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
