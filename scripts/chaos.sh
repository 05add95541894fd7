#!/usr/bin/env bash
# `make chaos`: the full-size fault-injection run (20,000 contacts) against a private Kafka and
# FerretDB; every service is killed and restarted, Kafka restarts, the database stops for 30 s.
# Arguments go to tests/chaos/run.py (e.g. --size 5000 --rate 50).
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_ROOT="$PWD"
export HERALD_RUN="$PWD/.cache/chaos-run"
export HERALD_LOGS="$PWD/.cache/chaos-logs"
export HERALD_KAFKA_PORT="${HERALD_CHAOS_KAFKA_PORT:-31092}"
export HERALD_KAFKA_CONTROLLER_PORT="${HERALD_CHAOS_KAFKA_CONTROLLER_PORT:-31093}"
export HERALD_MONGO_PORT="${HERALD_CHAOS_MONGO_PORT:-27419}"
export HERALD_TEST_KAFKA="127.0.0.1:$HERALD_KAFKA_PORT"
export HERALD_TEST_MONGO="mongodb://127.0.0.1:$HERALD_MONGO_PORT/"

bash deploy/local/infra.sh stop >/dev/null 2>&1 || true
rm -rf "$HERALD_RUN" "$HERALD_LOGS"
trap 'bash deploy/local/infra.sh stop >/dev/null 2>&1 || true' EXIT
bash deploy/local/infra.sh start
uv run --frozen python tests/chaos/run.py "$@"
