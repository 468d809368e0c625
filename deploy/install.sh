#!/bin/sh
# The image's install step (the Dockerfile runs exactly this; tests/test_image.py runs it too):
# a virtualenv at PREFIX with the hash-pinned dependencies of requirements.lock, then shim itself
# from SRC without dependencies and without build isolation (its build backend is in the lock).
# usage: deploy/install.sh PREFIX SRC
set -eu
prefix=$1
src=$2
python -m venv "$prefix"
# Hash-checking mode: every distribution must match a hash in the lock, and a dependency missing
# from the lock is an error (so the lock is complete).
"$prefix/bin/pip" install --require-hashes --only-binary=:all: -r "$src/requirements.lock"
"$prefix/bin/pip" install --no-deps --no-build-isolation --no-index "$src"
"$prefix/bin/pip" check
