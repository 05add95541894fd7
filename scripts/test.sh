#!/usr/bin/env bash
# `make test`: lint, start a private Kafka and FerretDB (own ports and data, wiped each run),
# run every test suite against them, stop them whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_ROOT="$PWD"
export HERALD_RUN="$PWD/.cache/test-run"
export HERALD_LOGS="$PWD/.cache/test-logs"
export HERALD_KAFKA_PORT="${HERALD_TEST_KAFKA_PORT:-19092}"
export HERALD_KAFKA_CONTROLLER_PORT="${HERALD_TEST_KAFKA_CONTROLLER_PORT:-19093}"
export HERALD_MONGO_PORT="${HERALD_TEST_MONGO_PORT:-27219}"
export HERALD_TEST_KAFKA="127.0.0.1:$HERALD_KAFKA_PORT"
export HERALD_TEST_MONGO="mongodb://127.0.0.1:$HERALD_MONGO_PORT/"

start=$SECONDS
echo "== lint"
make --no-print-directory lint
make --no-print-directory check-deploy

bash deploy/local/infra.sh stop >/dev/null 2>&1 || true
# The stacks the tests start log under .cache/logs/<suite>; the log scan reads this run's only.
rm -rf "$HERALD_RUN" "$HERALD_LOGS" .cache/logs/{e2e,fuzz,chaos,deploy,security}
trap 'bash deploy/local/infra.sh stop >/dev/null 2>&1 || true' EXIT
echo "== infrastructure (Kafka on :$HERALD_KAFKA_PORT, FerretDB on :$HERALD_MONGO_PORT)"
bash deploy/local/infra.sh start

echo "== tests"
uv run --frozen pytest tests "$@"
echo "== make test took $((SECONDS - start)) s"
