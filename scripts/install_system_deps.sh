#!/usr/bin/env bash
# Installs the Debian packages the local stack and the tests need (XRootD server, wrk),
# only those that are missing. Needs root (or sudo) and Debian's package registry.
set -euo pipefail
need=()
command -v xrootd >/dev/null 2>&1 || need+=(xrootd-server)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
