#!/usr/bin/env bash
# Create the virtual environment and install everything the platform and its tests need,
# including the few Debian packages perf_analyzer links against. Safe to re-run.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && ! dpkg -s libb64-0d >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null || \
    echo "warning: could not install libb64-0d (only perf_analyzer needs it)" >&2
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c constraints.txt -e '.[local,dev]'
