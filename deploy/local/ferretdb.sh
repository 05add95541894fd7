#!/usr/bin/env bash
# FerretDB v1 (MongoDB wire protocol) on its SQLite backend, built with `go install` from the
# small wrapper module in ferretdb/ (see ferretdb/main.go for why not the upstream command).
# usage: ferretdb.sh install|start|stop|status|logs|reset
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FERRET_HOST="${HERALD_MONGO_HOST:-127.0.0.1}"
FERRET_PORT="${HERALD_MONGO_PORT:-27017}"
FERRET_DATA="${HERALD_MONGO_DATA:-$HERALD_RUN/ferretdb-data}"
FERRET_BIN="$HERALD_CACHE/bin/ferretdb"
FERRET_PID="$HERALD_RUN/ferretdb.pid"
FERRET_LOG="$HERALD_LOGS/ferretdb.log"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# FerretDB 1.24.2 is built with ferretdb/sqlite-fixes.patch (see docs/architecture.md):
# - its SQLite backend spells `_id` lookups `_ferretdb_sjson->'$._id'` but indexes
#   `_ferretdb_sjson->"_id"`; SQLite uses an expression index only for the identical expression,
#   so every find/update/delete by `_id` scanned the table (8.6 s per update at 100k documents).
#   The patch spells the lookup like the index and pushes `_id` (a value or an `$in` of values)
#   down whenever a filter names it (the handler re-applies the whole filter);
# - update, findAndModify and delete read the matching documents and write them in a separate
#   statement, so two conditional writes ({_id, version}) could both succeed. The patch holds a
#   per-collection lock across the read and the write: single-document atomicity, as on MongoDB;
# - an update command kept every update's query rows (one pooled connection each, 100 in all)
#   open until it returned, so a bulk_write of over 100 updates hung FerretDB. The patch closes
#   them after each update;
# - every SQL statement was logged twice at debug level, and slog's Logger.With formats its
#   attributes (the statement's arguments: whole documents) before the level is checked, so a
#   quarter of the server's CPU went into quoting strings nobody reads. The patch checks the
#   level first;
# - every cursor, iterator and transaction was tracked for leaks (a pprof profile entry, a stack
#   walk and a finalizer each): a tenth of the server's CPU under the dispatcher's load. The
#   patch keeps that to FerretDB's own debug builds, as its stack capture already was;
# - SQLite has one writer per database, and concurrent writers waited in SQLite's busy handler,
#   which sleeps 1, 2, 5, 10… ms between attempts while the lock is held for far less; an update
#   command of 60 updates (60 transactions) queued 60 times. The patch queues writers on a mutex
#   per database, builds statements before taking it, and holds it once per update command.
# We build from a copy of the pinned module with the patch (go.mod `replace` through -modfile).
patched_module() {
  local mod dir="$HERALD_CACHE/ferretdb-patched"
  mod="$(cd "$HERE/ferretdb" && go mod download -json github.com/FerretDB/FerretDB | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
  [[ -d "$mod" ]] || die "cannot download the FerretDB module"
  rm -rf "$dir" && mkdir -p "$dir" && cp -r "$mod" "$dir/src" && chmod -R u+w "$dir/src"
  (cd "$dir/src" && git apply "$HERE/ferretdb/sqlite-fixes.patch") || die "the FerretDB patch no longer applies"
  cp "$HERE/ferretdb/go.mod" "$HERE/ferretdb/go.sum" "$dir/"
  (cd "$dir" && go mod edit -replace "github.com/FerretDB/FerretDB=$dir/src")
}

install() {
  command -v go >/dev/null || die "go is required"
  # go.mod/go.sum pin the version; the stamp rebuilds the binary when they, main.go or the patch change.
  local stamp="$HERALD_CACHE/bin/ferretdb.sha256" want
  want=$(cat "$HERE/ferretdb/main.go" "$HERE/ferretdb/go.mod" "$HERE/ferretdb/go.sum" "$HERE/ferretdb/sqlite-fixes.patch" | sha256sum | cut -d' ' -f1)
  if [[ -x "$FERRET_BIN" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  log "building FerretDB with go install (first time takes a minute)"
  mkdir -p "$HERALD_CACHE/bin"
  patched_module
  (cd "$HERE/ferretdb" && GOBIN="$HERALD_CACHE/bin" go install -modfile="$HERALD_CACHE/ferretdb-patched/go.mod" .)
  echo "$want" > "$stamp"
}

start() {
  install
  if pid_alive "$FERRET_PID"; then log "already running (pid $(cat "$FERRET_PID"))"; return 0; fi
  port_open "$FERRET_HOST" "$FERRET_PORT" && die "port $FERRET_PORT is taken by another process"
  mkdir -p "$FERRET_DATA"
  log "starting on $FERRET_HOST:$FERRET_PORT (log: $FERRET_LOG)"
  # synchronous(normal): WAL commits without an fsync each (see docs/architecture.md).
  # GOGC=400 (HERALD_MONGO_GOGC): Go's collector ran on every 100% heap growth, a tenth of the
  # server's CPU under the e2e benchmark; the heap of a local database is small, and
  # GOMEMLIMIT (HERALD_MONGO_MEMLIMIT, 1 GiB) bounds what the laxer collector lets it reach.
  GOGC="${HERALD_MONGO_GOGC:-400}" GOMEMLIMIT="${HERALD_MONGO_MEMLIMIT:-1GiB}" \
  nohup "$FERRET_BIN" --handler=sqlite --sqlite-url="file:$FERRET_DATA/?_pragma=synchronous(normal)" \
    --listen-addr="$FERRET_HOST:$FERRET_PORT" \
    --log-level="${HERALD_MONGO_LOG_LEVEL:-error}" \
    --debug-addr="${HERALD_MONGO_DEBUG_ADDR:-}" >> "$FERRET_LOG" 2>&1 &
  echo $! > "$FERRET_PID"
  wait_port "$FERRET_HOST" "$FERRET_PORT" 30 "$FERRET_PID" || { tail -20 "$FERRET_LOG" >&2; die "FerretDB did not start"; }
  log "ready"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop_pid ferretdb "$FERRET_PID" ;;
  # Stop, then forget every stored record: the next start begins empty.
  reset) stop_pid ferretdb "$FERRET_PID"; rm -rf "$FERRET_DATA"; log "ferretdb data removed" ;;
  status) if pid_alive "$FERRET_PID"; then echo "ferretdb running pid=$(cat "$FERRET_PID") $FERRET_HOST:$FERRET_PORT"; else echo "ferretdb stopped"; exit 3; fi ;;
  logs) tail -n "${2:-100}" "$FERRET_LOG" ;;
  *) echo "usage: $0 install|start|stop|status|logs|reset" >&2; exit 2 ;;
esac
