#!/usr/bin/env bash
# The benchmark's peers (BentoML, LitServe) in their own environment, .venv-bench, so that
# their web stacks never change .venv's:  ./scripts/bench_env.sh
# It installs segserve with the `bench` extra (the peer services read the models' metadata
# with app.spec) and the very onnxruntime-gpu version of .venv, so that every server in
# bench/peers_benchmark.py runs the same onnxruntime build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -m pip install --quiet --upgrade pip
pins=()
if [ -x .venv/bin/python ]; then
  ort=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')
  pins+=("onnxruntime-gpu==$ort")
fi
.venv-bench/bin/python -m pip install --quiet -e '.[bench]' "${pins[@]}"
if .venv-bench/bin/python -m pip show --quiet onnxruntime >/dev/null 2>&1; then
  echo "error: plain onnxruntime is installed next to onnxruntime-gpu in .venv-bench" >&2
  exit 1
fi
.venv-bench/bin/python -c 'import bentoml, litserve; print("bentoml", bentoml.__version__, "litserve", litserve.__version__)'
