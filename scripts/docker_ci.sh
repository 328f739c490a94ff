#!/usr/bin/env bash
# Build the CPU image on a real Docker engine, run it with compose and check that the container
# serves what the in-process service serves. Needs ../shared/tools/docker and the .venv that
# scripts/test.sh makes. Prints build time and image size. Usage: scripts/docker_ci.sh
set -euo pipefail
cd "$(dirname "$0")/.."
D=../shared/tools/docker
.venv/bin/hadolint Dockerfile
echo "hadolint: Dockerfile ok"
bash "$D/up.sh"
# shellcheck disable=SC1091
. "$D/env.sh"
trap 'bash "$D/compose.sh" down -v --remove-orphans || true; bash "$D/down.sh"' EXIT
start=$(date +%s)
docker build --network host --build-arg RUNTIME=cpu -t segserve:cpu . >/tmp/segserve-build.log 2>&1 \
  || { tail -40 /tmp/segserve-build.log; exit 1; }
echo "docker build (cpu): $(( $(date +%s) - start )) s, image $(docker image inspect segserve:cpu --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
bash "$D/compose.sh" up --no-build --wait --wait-timeout 180 segserve
health=$(docker inspect --format '{{.State.Health.Status}}' "$(bash "$D/compose.sh" ps -q segserve)")
echo "container health: $health"
[ "$health" = healthy ]
.venv/bin/python scripts/check_deployment.py --url http://127.0.0.1:8000
# The gRPC port too (SEG_GRPC_PORT=8081 in the image): tritonclient.grpc against /v1.
.venv/bin/python scripts/check_grpc.py --grpc 127.0.0.1:8081 --url http://127.0.0.1:8000
docker run --rm --network host --entrypoint id segserve:cpu
