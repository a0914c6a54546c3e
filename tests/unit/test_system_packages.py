"""scripts/system-packages.sh installs what a target needs and leaves no daemon started or enabled.

apt-get, dpkg, systemctl, update-rc.d and id are replaced by recording shims on PATH (a real
install needs root, the network and would change this machine); the script itself runs for real
under bash. The README must list every package the scripts install.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "system-packages.sh"

SHIMS = {
    # dpkg -s P: installed unless P is listed in $MISSING.
    "dpkg": 'case " $MISSING " in *" $2 "*) exit 1;; esac; exit 0',
    # apt-get install records whether a service start would have been denied at that moment.
    "apt-get": (
        'echo "apt-get $*" >>"$LOG"; '
        'if [ "$1" = install ] || [ "$4" = install ]; then '
        '"$POLICY_RC_D" orthanc start; echo "policy-rc.d exit $?" >>"$LOG"; fi'
    ),
    "systemctl": 'echo "systemctl $*" >>"$LOG"',
    "update-rc.d": 'echo "update-rc.d $*" >>"$LOG"',
    "id": "echo 0",
}


def run_script(tmp_path: Path, group: str, missing: list[str]) -> tuple[int, list[str], Path]:
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in SHIMS.items():
        shim = shims / name
        shim.write_text(f"#!/bin/sh\n{body}\n")
        shim.chmod(0o755)
    log, policy = tmp_path / "calls.log", tmp_path / "policy-rc.d"
    log.touch()
    env = os.environ | {
        "PATH": f"{shims}:{os.environ['PATH']}",
        "MISSING": " ".join(missing),
        "LOG": str(log),
        "POLICY_RC_D": str(policy),
    }
    done = subprocess.run(["bash", str(SCRIPT), group], env=env, capture_output=True, check=False)
    return done.returncode, log.read_text().splitlines(), policy


def test_daemons_are_not_started_during_the_install_and_are_disabled_after(tmp_path: Path) -> None:
    code, calls, policy = run_script(tmp_path, "test", ["orthanc", "dcmtk", "prometheus"])
    assert code == 0
    install = next(c for c in calls if c.startswith("apt-get") and " install " in c)
    assert {"orthanc", "dcmtk", "prometheus"} <= set(install.split())
    assert "dicom3tools" not in install  # already installed: not reinstalled
    assert "policy-rc.d exit 101" in calls  # a start asked for during the install was denied
    assert not policy.exists()  # the temporary policy is removed afterwards
    for daemon in ("orthanc", "prometheus"):
        assert f"systemctl disable {daemon}.service" in calls
        assert f"systemctl stop {daemon}.service" in calls


def test_a_package_already_installed_is_left_as_it_was(tmp_path: Path) -> None:
    code, calls, _ = run_script(tmp_path, "test", ["dcmtk"])
    assert code == 0
    assert not [c for c in calls if c.startswith(("systemctl", "update-rc.d"))]


def test_nothing_missing_means_no_apt_at_all(tmp_path: Path) -> None:
    code, calls, _ = run_script(tmp_path, "bench", [])
    assert (code, calls) == (0, [])


def test_an_existing_policy_is_kept(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n# the host's own\n")
    policy.chmod(0o755)
    code, _, _ = run_script(tmp_path, "bench", ["libb64-0d"])
    assert code == 0
    assert policy.read_text().endswith("# the host's own\n")


def test_an_unknown_group_is_refused(tmp_path: Path) -> None:
    code, calls, _ = run_script(tmp_path, "docs", [])
    assert code == 2 and calls == []


def scripted_packages() -> set[str]:
    text = SCRIPT.read_text()
    return {p for group in re.findall(r"packages=\(([^)]*)\)", text) for p in group.split()}


@pytest.mark.parametrize("package", sorted(scripted_packages()))
def test_the_readme_lists_every_package_and_why(package: str) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{package}` |")]
    assert len(rows) == 1, f"README's package table lacks {package}"
    assert len(rows[0].split("|")[2].strip()) > 10  # says what it is for
