#!/usr/bin/env bash
# Prometheus and promtool from Debian's `prometheus` package: promtool checks the alert rules in
# CI; `make run PROMETHEUS=1` runs a local Prometheus scraping every service.
# usage: prometheus.sh install|path
set -euo pipefail
PROMTOOL="${HERALD_PROMTOOL:-/usr/bin/promtool}"
case "${1:-}" in
  install)
    if [[ -x "$PROMTOOL" && -x /usr/bin/prometheus ]]; then exit 0; fi
    command -v apt-get >/dev/null || { echo "promtool missing and no apt-get: install Prometheus and set HERALD_PROMTOOL" >&2; exit 1; }
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "[prometheus] installing Debian's prometheus" >&2
    $SUDO apt-get update -qq
    # --no-install-recommends: only the server and promtool, not the exporters.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package starts a system service on :9090 where systemd runs; Herald runs its own.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
      $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    ;;
  path) echo "$PROMTOOL" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
