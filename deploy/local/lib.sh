# Shared helpers for the local infrastructure scripts. Sourced, not run.
# Every path and port can be overridden from the environment.
set -euo pipefail

HERALD_ROOT="${HERALD_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
HERALD_CACHE="${HERALD_CACHE:-$HERALD_ROOT/.cache}"
HERALD_RUN="${HERALD_RUN:-$HERALD_CACHE/run}"
HERALD_LOGS="${HERALD_LOGS:-$HERALD_CACHE/logs}"
mkdir -p "$HERALD_CACHE" "$HERALD_RUN" "$HERALD_LOGS"

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid_alive FILE: true when FILE names a running process.
pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port HOST PORT SECONDS PIDFILE: wait until the port opens or the process dies.
wait_port() {
  local host=$1 port=$2 deadline=$((SECONDS + $3)) pidfile=$4
  until port_open "$host" "$port"; do
    pid_alive "$pidfile" || return 1
    (( SECONDS < deadline )) || return 1
    sleep 0.3
  done
}

# stop_pid NAME PIDFILE: TERM, then KILL after 20 s.
stop_pid() {
  local name=$1 pidfile=$2
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    # A killed JVM holds its sockets until it is gone: a restart must not race it for the port.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "$name stopped"
  else
    log "$name not running"
  fi
  rm -f "$pidfile"
}
