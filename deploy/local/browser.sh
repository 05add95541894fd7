#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for tests of customer-facing pages.
# usage: browser.sh install|path
set -euo pipefail
CHROMIUM="${HERALD_CHROMIUM:-/usr/bin/chromium}"
case "${1:-}" in
  install)
    if [[ -x "$CHROMIUM" ]]; then exit 0; fi
    command -v apt-get >/dev/null || { echo "chromium missing and no apt-get: install Chromium and set HERALD_CHROMIUM" >&2; exit 1; }
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "[browser] installing Debian's chromium" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    ;;
  path) echo "$CHROMIUM" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
