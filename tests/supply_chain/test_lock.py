"""The hash-pinned locks (requirements/*.lock, written by `make lock`) agree with pyproject.toml.

Offline and cheap: only files are read. Every lock pins each package exactly, with the sha256 of
its files, and names no index, link or local path; it covers every dependency pyproject.toml
declares for its group (the build backend and pip too where the project is installed from it)
at a version the declared specifier allows; and a package has one version across all locks.
Whether a lock is complete (each locked package's own dependencies locked too) is what
`pip check` proves after scripts/setup.sh installs it with --no-deps.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "requirements"
# lock -> (pyproject extras it holds besides the dependencies, whether the project is installed
# from it: then pip and build-system.requires are locked too). None: not the project's packages.
LOCKS: dict[str, tuple[tuple[str, ...], bool] | None] = {
    "runtime": ((), False),  # the Docker image
    "dev": (("local", "dev"), True),  # scripts/setup.sh (make setup/test/demo)
    "train": (("local", "dev", "train"), True),  # make train-deps
    "bench": (("local", "dev", "bench"), True),  # make bench
    "lock-tools": None,  # make lock's own venv (pip-tools)
}
# requirements/*.in -> locks that must pin each requirement it names.
INPUTS = {
    "install.in": ("dev", "train", "bench"),
    "train.in": ("train",),
    "lock-tools.in": ("lock-tools",),
}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    hashes: tuple[str, ...]
    line: str


def _entries(text: str) -> list[str]:
    """Logical lines of a requirements file: continuations joined, comments dropped."""
    entries: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            if current:
                entries.append(current.strip())
                current = ""
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        entries.append((current + line).strip())
        current = ""
    if current:
        entries.append(current.strip())
    return entries


@cache
def lock(name: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for entry in _entries((REQUIREMENTS / f"{name}.lock").read_text()):
        requirement, *options = entry.split()
        assert not requirement.startswith("-"), f"{name}.lock: option line {entry!r}"
        req = Requirement(requirement)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{name}.lock: {requirement}"
        assert not req.url and not req.extras, f"{name}.lock: {requirement}"
        pin = Pin(canonicalize_name(req.name), Version(specs[0].version), tuple(options), entry)
        assert pin.name not in pins, f"{name}.lock pins {pin.name} twice"
        pins[pin.name] = pin
    return pins


@cache
def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def optional(extra: str) -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return [Requirement(r) for r in project["optional-dependencies"][extra]]


def declared(extras: tuple[str, ...], installs_project: bool) -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += optional(extra)
    if installs_project:
        build = pyproject()["build-system"]
        assert isinstance(build, dict)
        reqs += [Requirement(r) for r in build["requires"]]
        reqs.append(Requirement("pip"))
    return reqs


def test_every_lock_is_there_and_no_other() -> None:
    assert {p.stem for p in REQUIREMENTS.glob("*.lock")} == set(LOCKS)
    assert {p.name for p in REQUIREMENTS.glob("*.in")} == set(INPUTS)


@pytest.mark.parametrize("name", LOCKS)
def test_every_line_is_an_exact_pin_with_hashes(name: str) -> None:
    pins = lock(name)
    assert pins, f"{name}.lock pins nothing"
    for pin in pins.values():
        assert pin.hashes, f"{name}.lock: {pin.name} has no --hash"
        bad = [h for h in pin.hashes if not HASH.fullmatch(h)]
        assert bad == [], f"{name}.lock: {pin.name}: {bad}"


@pytest.mark.parametrize("name", LOCKS)
def test_lock_names_no_index_link_or_path(name: str) -> None:
    """Where pip finds the files is the installer's configuration; the lock only says which."""
    text = (REQUIREMENTS / f"{name}.lock").read_text()
    for option in ("--index-url", "--extra-index-url", "--find-links", "--trusted-host", "-e "):
        assert option not in text, f"{name}.lock: {option}"
    for entry in _entries(text):
        assert "file:" not in entry and "://" not in entry, f"{name}.lock: {entry}"


@pytest.mark.parametrize("name", [n for n, group in LOCKS.items() if group is not None])
def test_lock_covers_what_pyproject_declares(name: str) -> None:
    group = LOCKS[name]
    assert group is not None
    pins = lock(name)
    missing, outside = [], []
    for req in declared(*group):
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            missing.append(str(req))
        elif not req.specifier.contains(pin.version, prereleases=True):
            outside.append(f"{req} but {name}.lock pins {pin.version}")
    assert missing == [], f"{name}.lock lacks {missing}: run `make lock`"
    assert outside == [], f"{outside}: run `make lock`"


def test_each_lock_is_a_superset_of_its_smaller_groups() -> None:
    """train and bench install over the dev environment; the image's packages are the base."""
    for bigger, smaller in (("dev", "runtime"), ("train", "dev"), ("bench", "dev")):
        assert set(lock(smaller)) <= set(lock(bigger)), (bigger, smaller)


def test_a_package_has_one_version_in_every_lock() -> None:
    versions: dict[str, dict[str, Version]] = {}
    for name in LOCKS:
        for pin in lock(name).values():
            versions.setdefault(pin.name, {})[name] = pin.version
    split = {pkg: v for pkg, v in versions.items() if len(set(v.values())) > 1}
    assert split == {}


@pytest.mark.parametrize("filename", INPUTS)
def test_inputs_are_locked(filename: str) -> None:
    reqs = [Requirement(e) for e in _entries((REQUIREMENTS / filename).read_text())]
    assert reqs
    for name in INPUTS[filename]:
        pins = lock(name)
        for req in reqs:
            pin = pins.get(canonicalize_name(req.name))
            assert pin is not None, f"{name}.lock lacks {req} ({filename})"
            assert req.specifier.contains(pin.version, prereleases=True), (name, str(req))


def test_torch_is_the_cpu_build_of_the_declared_version() -> None:
    """PyPI's Linux torch is the CUDA build (and gigabytes of nvidia-* wheels): not this one."""
    torch = lock("train")["torch"]
    assert torch.version.local == "cpu"
    (declared_torch,) = [r for r in optional("train") if r.name == "torch"]
    assert declared_torch.specifier.contains(torch.version)
    cuda = [p for p in lock("train") if p.startswith("nvidia-") and p not in lock("dev")]
    assert cuda == []


def test_installs_use_the_locks_with_hashes() -> None:
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert "--require-hashes --no-deps -r requirements/dev.lock" in setup
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"--require-hashes --no-deps .*-r requirements/train\.lock", makefile)
    assert "--require-hashes --no-deps -r requirements/bench.lock" in makefile
    assert "requirements/dev.lock" in makefile.split("$(STAMP):", 1)[1].splitlines()[0]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "-r requirements/runtime.lock" in dockerfile
    for text in (setup, makefile, dockerfile):
        assert "constraints.txt" not in text
