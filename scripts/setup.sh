#!/usr/bin/env bash
# Create the virtual environment and install everything the platform and its tests need,
# including Debian packages: libb64-0d (perf_analyzer), prometheus (promtool and the
# Prometheus server the chart's rules are checked against), dicom3tools (dciodvfy) and dcmtk
# (dsrdump), which check the DICOM result objects, and orthanc with orthanc-dicomweb, a PACS
# the tests store them to. Safe to re-run.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

apt_packages=(libb64-0d prometheus dicom3tools dcmtk orthanc orthanc-dicomweb)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    echo "warning: install these Debian packages as root: ${missing[*]}" >&2
  fi
fi
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
