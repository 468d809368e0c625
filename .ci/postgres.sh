#!/usr/bin/env bash
# Install PostgreSQL's server binaries (Debian packages) when initdb is nowhere to be found.
# Nothing is started here: the test suite runs its own throwaway cluster (tests/pg.py).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql
