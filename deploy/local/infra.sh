#!/usr/bin/env bash
# The whole local infrastructure: Kafka and FerretDB, then Herald's topics. Stopping it also
# stops the services an earlier `make run` left running (services.sh), which would hold their
# ports and answer in place of the next run's.
# usage: infra.sh install|start|stop|status|logs|reset
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "${1:-}" in
  install) "$HERE/kafka.sh" install; "$HERE/ferretdb.sh" install ;;
  start)
    "$HERE/kafka.sh" start
    "$HERE/ferretdb.sh" start
    # Topics come from the contracts library, the single source of their names and policies.
    (cd "$HERALD_ROOT" && uv run --frozen herald-topics create \
      --bootstrap "${HERALD_KAFKA_HOST:-127.0.0.1}:${HERALD_KAFKA_PORT:-9092}" \
      --replication-factor 1)
    ;;
  stop) "$HERE/services.sh" stop; "$HERE/ferretdb.sh" stop; "$HERE/kafka.sh" stop ;;
  reset) "$HERE/services.sh" stop; "$HERE/ferretdb.sh" reset; "$HERE/kafka.sh" reset ;;
  status)
    rc=0; "$HERE/kafka.sh" status || rc=$?; "$HERE/ferretdb.sh" status || rc=$?
    "$HERE/services.sh" status; exit $rc ;;
  logs) "$HERE/kafka.sh" logs "${2:-50}"; "$HERE/ferretdb.sh" logs "${2:-50}" ;;
  *) echo "usage: $0 install|start|stop|status|logs|reset" >&2; exit 2 ;;
esac
