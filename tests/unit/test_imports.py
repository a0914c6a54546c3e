"""The services stay independent: each imports only services.common, services.api and itself.

A service that imports a sibling would drag the sibling's dependencies (scipy, codecs, ...)
into its image and tie their releases together; the contract between them is the gRPC API and
the domain types in services.common.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVICES = ("decoder", "preprocessor", "postprocessor", "gateway")
TOOLS = ("cli", "fleet", "trt", "triton_local")
# Packages no service and no shared module may import.
PLATFORM_ONLY = tuple(f"services.{name}" for name in (*SERVICES, *TOOLS))


def _module_name(root: Path, path: Path) -> tuple[str, str]:
    """(module, package it belongs to) of a file under root, e.g. services.gateway.core."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved to absolute names.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (c may be a submodule), so
    ``from services import gateway`` is seen as an import of services.gateway.
    """
    _, package = _module_name(root, path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module:
                found.add(module)
            found.update(f"{module}.{alias.name}" if module else alias.name for alias in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def import_violations(root: Path) -> list[str]:
    """'file: imported module' for each import that crosses a service boundary."""
    violations = []
    services = root / "services"
    for path in sorted(services.rglob("*.py")):
        relative = path.relative_to(root)
        top = relative.parts[1] if len(relative.parts) > 2 else ""
        if top in SERVICES:
            forbidden = [p for p in PLATFORM_ONLY if p != f"services.{top}"]
        elif top == "common":
            forbidden = list(PLATFORM_ONLY)
        else:  # services/api (generated), the tools, services/__init__.py
            continue
        for module in sorted(imported_modules(root, path)):
            if any(_within(module, package) for package in forbidden):
                violations.append(f"{relative.as_posix()}: {module}")
    return violations


def test_services_import_only_common_api_and_themselves() -> None:
    files = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "services").rglob("*.py")}
    assert {f"services/{s}/core.py" for s in SERVICES} <= files  # the walk sees the services
    violations = import_violations(REPO_ROOT)
    assert not violations, "imports across service boundaries:\n" + "\n".join(violations)


def test_the_walker_detects_a_cross_service_import(tmp_path: Path) -> None:
    gateway = tmp_path / "services" / "gateway"
    common = tmp_path / "services" / "common"
    cli = tmp_path / "services" / "cli"
    for folder in (gateway, common, cli):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (gateway / "x.py").write_text(
        "from services.postprocessor.core import assess\n"
        "from services.common.errors import InvalidInput\n"
        "from services.gateway.core import Limits\n"
        "from . import core\n"
        "from ..decoder import pool\n"
        "import services.fleet.kube\n"
        "\n"
        "def late():\n"
        "    from services import preprocessor\n"
    )
    (common / "y.py").write_text("from services.api.imaging.v1 import gateway_pb2\n")
    (common / "z.py").write_text("from ..gateway.core import StudyAnalyzer\n")
    (cli / "main.py").write_text("from services.gateway.core import StudyAnalyzer\n")

    assert import_violations(tmp_path) == [
        "services/common/z.py: services.gateway.core",
        "services/common/z.py: services.gateway.core.StudyAnalyzer",
        "services/gateway/x.py: services.decoder",
        "services/gateway/x.py: services.decoder.pool",
        "services/gateway/x.py: services.fleet.kube",
        "services/gateway/x.py: services.postprocessor.core",
        "services/gateway/x.py: services.postprocessor.core.assess",
        "services/gateway/x.py: services.preprocessor",
    ]


def test_relative_imports_resolve_against_the_package(tmp_path: Path) -> None:
    package = tmp_path / "services" / "gateway"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .core import StudyAnalyzer\n")
    (package / "server.py").write_text("from .clients import Channel\nfrom .. import common\n")
    assert imported_modules(tmp_path, package / "__init__.py") == {
        "services.gateway.core",
        "services.gateway.core.StudyAnalyzer",
    }
    assert imported_modules(tmp_path, package / "server.py") == {
        "services.gateway.clients",
        "services.gateway.clients.Channel",
        "services",
        "services.common",
    }


def test_the_gateway_core_does_not_load_scipy_or_pillow() -> None:
    code = (
        "import json, sys\nimport services.gateway.core\nprint(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "services.gateway.core" in modules
    heavy = [m for m in modules if m.split(".")[0] in {"scipy", "PIL"}]
    assert not heavy, f"importing services.gateway.core loads {heavy}"
