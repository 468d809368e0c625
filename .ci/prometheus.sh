#!/usr/bin/env bash
# Install promtool (Debian package prometheus) when it is missing: the test suite checks the alert
# rules and the dashboard's queries with it (tests/ops/test_monitoring.py; with CI set, a missing
# promtool fails the run). Nothing is started here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus
