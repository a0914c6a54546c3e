"""The version is declared once, in pyproject.toml; everything that repeats it is checked here.

The Dockerfile's OCI label and the chart's appVersion cannot import Python, so they state it
literally and this test parses them (Docker's instruction syntax, YAML) and compares. The
services read it from the installed package's metadata.
"""

from __future__ import annotations

import ast
import tomllib
from importlib.metadata import version

import dockerfile
import yaml
from conftest import REPO_ROOT

from services.common.version import platform_version


def declared() -> str:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def test_the_installed_package_is_the_declared_version() -> None:
    assert version("imaging-platform") == declared()


def test_the_services_report_the_declared_version() -> None:
    assert platform_version() == declared()


def test_the_image_label_is_the_declared_version() -> None:
    assert dockerfile.labels()["org.opencontainers.image.version"] == declared()


def test_the_chart_app_version_is_the_declared_version() -> None:
    chart = yaml.safe_load((REPO_ROOT / "helm" / "imaging-platform" / "Chart.yaml").read_text())
    assert str(chart["appVersion"]) == declared()


def test_no_service_states_the_version_itself() -> None:
    """A literal copy would go stale at the next release: services read platform_version()."""
    copies = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
        for path in sorted((REPO_ROOT / "services").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value == declared()
    ]
    assert copies == []
