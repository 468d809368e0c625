#!/bin/sh
# Tools `make bench` uses, installed from Debian only when missing: wrk (load generator), nginx
# (the v2 upstream stand-in, plain and TLS), openssl (its self-signed certificate), taskset
# (util-linux, normally present). Nothing fails if a tool cannot be installed: bench/run.py falls
# back (a pinned Python load generator, the Python upstream) and says so.
set -u
missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || missing="$missing nginx-light"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v taskset >/dev/null 2>&1 || missing="$missing util-linux"
[ -z "$missing" ] && exit 0
echo "bench/setup.sh: installing$missing"
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
    echo "bench/setup.sh: not root and no sudo; the bench falls back where it can"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
$sudo apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null 2>&1 && $sudo apt-get install -y --no-install-recommends $missing >/dev/null 2>&1; } \
    || echo "bench/setup.sh: could not install$missing; the bench falls back where it can"
# Debian's package may start a system nginx (port 80); the bench runs its own on loopback ports.
exit 0
