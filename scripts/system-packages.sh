#!/usr/bin/env bash
# Install the Debian packages one part of the project needs, without leaving a daemon behind.
#   test   dicom3tools (dciodvfy) and dcmtk (dsrdump) check the DICOM result objects;
#          orthanc + orthanc-dicomweb are the PACS the tests store them to; prometheus gives
#          promtool and the Prometheus server the chart's rules are checked against; nginx is
#          the edge proxy of the Kubernetes walk-through's local twin (TLS ends there and is
#          re-encrypted to the gateway with a client certificate).
#   bench  libb64-0d, which perf_analyzer (the tritonclient wheel) links.
# The platform itself (make demo, imaging-platform up) needs none of them.
#
# Orthanc, Prometheus and nginx are daemons: Debian's install scripts start them and enable them at
# boot. The tests start their own on loopback ports, so a start is denied during the install
# (policy-rc.d, the Debian mechanism invoke-rc.d consults) and the units of the packages this run
# installed are disabled afterwards. A package that was already installed is left as it was.
# Safe to re-run; without root or apt it names what is missing and continues.
set -euo pipefail
group=${1:?usage: system-packages.sh test|bench}
case "$group" in
  test) packages=(dicom3tools dcmtk orthanc orthanc-dicomweb prometheus nginx) daemons=(orthanc prometheus nginx) ;;
  bench) packages=(libb64-0d) daemons=() ;;
  *) echo "system-packages.sh: unknown group '$group' (test or bench)" >&2; exit 2 ;;
esac

missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  echo "warning: the $group target needs these Debian packages (install them as root): ${missing[*]}" >&2
  exit 0
fi
echo "installing Debian packages for $group: ${missing[*]}" >&2

policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d}  # overridable only for its own test
own_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# temporary: no service starts during an install (system-packages.sh)\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=true
fi
cleanup() { if $own_policy; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for daemon in "${daemons[@]}"; do
  [[ " ${missing[*]} " == *" $daemon "* ]] || continue
  if command -v systemctl >/dev/null; then
    systemctl disable "$daemon.service" >/dev/null 2>&1 || true
    systemctl stop "$daemon.service" >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null && [ -e "/etc/init.d/$daemon" ]; then
    update-rc.d "$daemon" disable >/dev/null 2>&1 || true
  fi
  echo "  $daemon: installed, not started, disabled at boot" >&2
done
