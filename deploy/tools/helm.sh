#!/usr/bin/env bash
# The Helm CLI, built with `go install` from the pinned tool module in helm/ (go.mod/go.sum),
# cached in .cache/bin like FerretDB. usage: helm.sh install|path
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HELM_BIN="$HERALD_CACHE/bin/helm"

install() {
  command -v go >/dev/null || die "go is required to build helm"
  # The stamp rebuilds the binary when the pinned version changes.
  local stamp="$HERALD_CACHE/bin/helm.sha256" want
  want=$(cat "$HERE/helm/go.mod" "$HERE/helm/go.sum" | sha256sum | cut -d' ' -f1)
  if [[ -x "$HELM_BIN" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  log "building helm with go install (first time takes a couple of minutes)"
  mkdir -p "$HERALD_CACHE/bin"
  (cd "$HERE/helm" && GOBIN="$HERALD_CACHE/bin" go install helm.sh/helm/v3/cmd/helm)
  echo "$want" > "$stamp"
}

case "${1:-}" in
  install) install ;;
  path) echo "$HELM_BIN" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
