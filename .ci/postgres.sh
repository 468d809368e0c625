#!/usr/bin/env bash
# Install (Debian packages) and start a PostgreSQL server on loopback for the test suite.
# Prints the URL to use as SHIM_TEST_POSTGRES_URL on its last line.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq postgresql >&2
fi
VER=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$VER main$"; then
  $SUDO pg_createcluster "$VER" main >&2
fi
PORT=$(pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main" {print $3}')
if ! pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main" {print $4}' | grep -q online; then
  $SUDO pg_ctlcluster "$VER" main start >&2
fi
for _ in $(seq 1 30); do
  if \
     su postgres -c "psql -p $PORT -qAtc 'select 1'" >/dev/null 2>&1; then break; fi
  sleep 1
done
su postgres -c "psql -p $PORT -qAtc \"ALTER USER postgres PASSWORD 'shim-test'\"" >&2
# Room for the multi-replica and contract suites.
su postgres -c "psql -p $PORT -qAtc \"ALTER SYSTEM SET max_connections = 300\"" >&2
$SUDO pg_ctlcluster "$VER" main restart >&2
echo "postgresql://postgres:shim-test@127.0.0.1:$PORT/postgres"
