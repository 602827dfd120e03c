#!/usr/bin/env bash
# Installs the Debian packages the local stack and the tests need (XRootD server, wrk,
# Chromium and its WebDriver for the registry page's browser test), only those that are
# missing. Needs root (or sudo) and Debian's package registry.
set -euo pipefail
need=()
command -v xrootd >/dev/null 2>&1 || need+=(xrootd-server)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
