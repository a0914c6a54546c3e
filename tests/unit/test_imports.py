"""The services stay independent: each imports only services.common, services.api and itself.

A service that imports a sibling would drag the sibling's dependencies (scipy, codecs, ...)
into its image and tie their releases together; the contract between them is the gRPC API and
the domain types in services.common.

Code lives with its users: a feature one package uses lives in that package (HOMES), and
services.common holds what several share. There the contracts (domain types, errors,
pipelines, settings, ...) import neither gRPC nor protobuf nor the RPC plumbing (RPC_PLUMBING:
server, interceptor, TLS, the pixel exchange, ...), so that a tool or a test can use the
contracts without the wire.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVICES = ("decoder", "preprocessor", "postprocessor", "gateway", "ingest")
TOOLS = ("cli", "fleet", "trt", "triton_local")
# Packages no service and no shared module may import.
PLATFORM_ONLY = tuple(f"services.{name}" for name in (*SERVICES, *TOOLS))

# Features with one user: module -> the one package of services/ that may import it (tests may).
HOMES = {
    # DICOM SR/SEG/SC and FHIR builders (highdicom, fhir.resources): the gateway's results.
    "services.gateway.reports": "services.gateway",
    # Throwaway CAs for `imaging-platform up --tls`.
    "services.cli.pki": "services.cli",
    # `imaging-platform audit verify`; the writer (services.common.audit) is shared.
    "services.cli.audit_verify": "services.cli",
    # The local NATS server of `imaging-platform up` and the tests.
    "services.cli.natsserver": "services.cli",
}

# The RPC side of services.common: gRPC and protobuf, the wire and what serves it. Every other
# module of services.common is a contract or a shared feature and imports none of these, nor
# any RPC package.
RPC_PLUMBING = tuple(
    f"services.common.{name}"
    for name in (
        "server",  # the gRPC server: health, reflection, metrics port, graceful shutdown
        "interceptor",  # domain errors -> gRPC statuses, per-RPC logs and metrics
        "remote_errors",  # gRPC statuses -> domain errors
        "admission",  # bounded concurrent RPCs
        "metrics",  # per-RPC Prometheus metrics
        "tls",  # gRPC credentials
        "exchange",  # decoded pixels beside the RPC, in shared memory
        "convert",  # domain objects <-> protobuf messages
        "tensors",  # numpy <-> imaging.v1.Tensor
    )
)
RPC_PACKAGES = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "google.protobuf",
    "google.rpc",
    "services.api",
)
# Contract -> RPC imports it still has, and why. Each goes when its reason does; the test fails
# on an entry no longer needed, so this list only shrinks. Empty: errors carry their status by
# name (errors.Status), TlsFiles is a contract of its own, the exchange is built from settings.
KNOWN_RPC_IMPORTS: set[tuple[str, str]] = set()


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


def home_violations(root: Path) -> list[str]:
    """'file: imported module' for each import of a HOMES module from outside its home."""
    violations = []
    for path in sorted((root / "services").rglob("*.py")):
        relative = path.relative_to(root)
        module, _ = _module_name(root, path)
        for imported in sorted(imported_modules(root, path)):
            for feature, home in HOMES.items():
                if _within(imported, feature) and not _within(module, home):
                    violations.append(f"{relative.as_posix()}: {imported}")
    return violations


def contract_rpc_imports(root: Path) -> set[tuple[str, str]]:
    """(module, import) for each RPC package or RPC_PLUMBING module that a module of
    services.common outside RPC_PLUMBING imports. Since every such module is checked, none
    reaches gRPC through another either."""
    found = set()
    for path in sorted((root / "services" / "common").rglob("*.py")):
        module, _ = _module_name(root, path)
        if any(_within(module, plumbing) for plumbing in RPC_PLUMBING):
            continue
        for imported in imported_modules(root, path):
            for rpc in (*RPC_PACKAGES, *RPC_PLUMBING):
                if _within(imported, rpc):
                    found.add((module, rpc))
    return found


def test_services_import_only_common_api_and_themselves() -> None:
    files = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "services").rglob("*.py")}
    assert {f"services/{s}/core.py" for s in SERVICES} <= files  # the walk sees the services
    violations = import_violations(REPO_ROOT)
    assert not violations, "imports across service boundaries:\n" + "\n".join(violations)


def test_features_are_imported_only_by_their_home() -> None:
    for feature in HOMES:
        folder = REPO_ROOT / feature.replace(".", "/")
        assert folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file(), feature
    violations = home_violations(REPO_ROOT)
    assert not violations, "imports of a feature outside its home:\n" + "\n".join(violations)


def test_contracts_import_no_grpc_protobuf_or_rpc_plumbing() -> None:
    common = {p.stem for p in (REPO_ROOT / "services" / "common").glob("*.py")}
    assert {name.rsplit(".", 1)[1] for name in RPC_PLUMBING} <= common
    found = contract_rpc_imports(REPO_ROOT)
    new = sorted(f"{module}: {rpc}" for module, rpc in found - KNOWN_RPC_IMPORTS)
    assert not new, "contracts that import gRPC, protobuf or RPC plumbing:\n" + "\n".join(new)
    gone = sorted(f"{module}: {rpc}" for module, rpc in KNOWN_RPC_IMPORTS - found)
    assert not gone, "no longer imported, remove from KNOWN_RPC_IMPORTS:\n" + "\n".join(gone)


def test_the_walker_detects_imports_outside_a_home_and_rpc_in_contracts(tmp_path: Path) -> None:
    services = tmp_path / "services"
    for name in ("common", "gateway", "gateway/reports", "cli", "fleet"):
        (services / name).mkdir(parents=True)
        (services / name / "__init__.py").write_text("")
    (services / "gateway" / "reporting.py").write_text("from . import reports\n")
    (services / "gateway" / "reports" / "sr.py").write_text("from . import codes\n")
    (services / "cli" / "main.py").write_text(
        "from services.cli.pki import DevPki\nfrom services.gateway.reports import sr\n"
    )
    (services / "fleet" / "kube.py").write_text("from ..cli import audit_verify\n")
    (services / "common" / "images.py").write_text(
        "import grpc\nfrom google.protobuf import any_pb2\nfrom services.common import tls\n"
    )
    (services / "common" / "results.py").write_text("from services.common.grids import Grid\n")
    (services / "common" / "server.py").write_text("import grpc\nfrom . import tls\n")

    assert home_violations(tmp_path) == [
        "services/cli/main.py: services.gateway.reports",
        "services/cli/main.py: services.gateway.reports.sr",
        "services/fleet/kube.py: services.cli.audit_verify",
    ]
    assert contract_rpc_imports(tmp_path) == {
        ("services.common.images", "grpc"),
        ("services.common.images", "google.protobuf"),
        ("services.common.images", "services.common.tls"),
    }


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
