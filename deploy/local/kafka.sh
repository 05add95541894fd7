#!/usr/bin/env bash
# Apache Kafka (KRaft, single node) from Maven Central jars, no Docker.
# usage: kafka.sh install|start|stop|status|logs|reset
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_HOST="${HERALD_KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${HERALD_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${HERALD_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_DATA="${HERALD_KAFKA_DATA:-$HERALD_RUN/kafka-data}"
KAFKA_HEAP="${HERALD_KAFKA_HEAP:--Xmx512m -Xms256m}"
KAFKA_LIBS="$HERALD_CACHE/kafka/libs"
KAFKA_PID="$HERALD_RUN/kafka.pid"
KAFKA_LOG="$HERALD_LOGS/kafka.log"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

install() {
  command -v java >/dev/null || die "java (17+) is required"
  command -v mvn >/dev/null || die "maven is required"
  local stamp="$HERALD_CACHE/kafka/pom.sha256" want
  want=$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -n "$(ls -A "$KAFKA_LIBS" 2>/dev/null)" ]]; then
    return 0
  fi
  log "resolving Kafka jars from Maven Central"
  rm -rf "$KAFKA_LIBS"; mkdir -p "$KAFKA_LIBS"
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_LIBS" -DincludeScope=runtime
  echo "$want" > "$stamp"
  log "$(ls "$KAFKA_LIBS" | wc -l) jars in $KAFKA_LIBS"
}

java_cmd() {
  # shellcheck disable=SC2206
  JAVA_CMD=(java $KAFKA_HEAP -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$HERE/log4j2.xml" -cp "$KAFKA_LIBS/*")
}

write_config() {
  mkdir -p "$KAFKA_DATA"
  cat > "$HERALD_RUN/kafka-server.properties" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
log.dirs=$KAFKA_DATA
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=60000
PROPS
}

start() {
  install
  if pid_alive "$KAFKA_PID"; then log "already running (pid $(cat "$KAFKA_PID"))"; return 0; fi
  port_open "$KAFKA_HOST" "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process"
  write_config
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    log "formatting storage in $KAFKA_DATA"
    java_cmd
    "${JAVA_CMD[@]}" kafka.tools.StorageTool format --standalone \
      -t "$("${JAVA_CMD[@]}" kafka.tools.StorageTool random-uuid)" \
      -c "$HERALD_RUN/kafka-server.properties" >> "$KAFKA_LOG" 2>&1
  fi
  # A broker that just stopped leaves its ports' connections in TIME_WAIT, and a new broker's
  # listener then fails to bind ("Address already in use"): wait them out, bounded.
  if command -v ss >/dev/null; then
    for _ in $(seq 1 90); do
      [[ -z "$(ss -Htan "( sport = :$KAFKA_PORT or sport = :$KAFKA_CONTROLLER_PORT )")" ]] && break
      sleep 1
    done
  fi
  log "starting on $KAFKA_HOST:$KAFKA_PORT (log: $KAFKA_LOG)"
  java_cmd
  nohup "${JAVA_CMD[@]}" kafka.Kafka "$HERALD_RUN/kafka-server.properties" >> "$KAFKA_LOG" 2>&1 &
  echo $! > "$KAFKA_PID"
  wait_port "$KAFKA_HOST" "$KAFKA_PORT" 90 "$KAFKA_PID" || { tail -20 "$KAFKA_LOG" >&2; die "Kafka did not start"; }
  log "ready"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop_pid kafka "$KAFKA_PID" ;;
  # Stop, then forget every stored record: the next start begins empty.
  reset) stop_pid kafka "$KAFKA_PID"; rm -rf "$KAFKA_DATA"; log "kafka data removed" ;;
  status) if pid_alive "$KAFKA_PID"; then echo "kafka running pid=$(cat "$KAFKA_PID") $KAFKA_HOST:$KAFKA_PORT"; else echo "kafka stopped"; exit 3; fi ;;
  logs) tail -n "${2:-100}" "$KAFKA_LOG" ;;
  *) echo "usage: $0 install|start|stop|status|logs|reset" >&2; exit 2 ;;
esac
