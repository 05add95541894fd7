#!/usr/bin/env bash
# `make bench`: benchmarks against a private Kafka and FerretDB; figures in bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_ROOT="$PWD"
export HERALD_RUN="$PWD/.cache/bench-run"
export HERALD_LOGS="$PWD/.cache/bench-logs"
export HERALD_KAFKA_PORT="${HERALD_BENCH_KAFKA_PORT:-29092}"
export HERALD_KAFKA_CONTROLLER_PORT="${HERALD_BENCH_KAFKA_CONTROLLER_PORT:-29093}"
export HERALD_MONGO_PORT="${HERALD_BENCH_MONGO_PORT:-27319}"
export HERALD_TEST_KAFKA="127.0.0.1:$HERALD_KAFKA_PORT"
export HERALD_TEST_MONGO="mongodb://127.0.0.1:$HERALD_MONGO_PORT/"

bash deploy/local/infra.sh stop >/dev/null 2>&1 || true
rm -rf "$HERALD_RUN"
trap 'bash deploy/local/infra.sh stop >/dev/null 2>&1 || true' EXIT
bash deploy/local/infra.sh start
mkdir -p bench-results
uv run --frozen python tests/bench/run.py "$@"
