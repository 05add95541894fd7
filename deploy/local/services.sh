#!/usr/bin/env bash
# The services `make run` started, by the pid files it keeps in $HERALD_RUN/services: stops any
# that outlived it (a run killed before its clean-up, kill -9 or a crash).
# usage: services.sh stop|status
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PID_DIR="$HERALD_RUN/services"

# ours NAME PIDFILE: the pid is alive and still runs that service's module (not a process that
# took over a recycled pid).
ours() {
  local module="herald_${1//-/_}"
  pid_alive "$2" && [[ "$(ps -o args= -p "$(cat "$2")" 2>/dev/null)" == *" -m $module" ]]
}

case "${1:-}" in
  stop)
    shopt -s nullglob
    for pidfile in "$PID_DIR"/*.pid; do
      name=$(basename "$pidfile" .pid)
      if ours "$name" "$pidfile"; then
        stop_pid "$name" "$pidfile"
      else
        rm -f "$pidfile"
      fi
    done
    ;;
  status)
    shopt -s nullglob
    for pidfile in "$PID_DIR"/*.pid; do
      name=$(basename "$pidfile" .pid)
      if ours "$name" "$pidfile"; then echo "$name running pid=$(cat "$pidfile")"; fi
    done
    ;;
  *) echo "usage: $0 stop|status" >&2; exit 2 ;;
esac
