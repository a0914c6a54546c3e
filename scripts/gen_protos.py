"""Generate the Python gRPC code for protos/imaging/v1 into services/api.

protoc writes absolute imports (``from imaging.v1 import x_pb2``) that only resolve when the
output folder is on sys.path; we rewrite them to the installed package path so the generated
code is a normal subpackage. ``--check`` regenerates into a temporary folder and fails when the
committed files differ (CI runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PACKAGE = "services.api"
OUT = ROOT / "services" / "api"
_IMPORT = re.compile(r"^from imaging\.v1 import", re.MULTILINE)


def generate(out: Path) -> None:
    """Run protoc for every .proto file and make the result an importable package."""
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in out.rglob("*.py*"):
        text = _IMPORT.sub(f"from {PACKAGE}.imaging.v1 import", path.read_text())
        path.write_text(text)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def differences(left: Path, right: Path) -> list[str]:
    """Relative paths of generated files that differ between two trees."""
    names = {p.relative_to(left) for p in left.rglob("*") if p.is_file()}
    names |= {p.relative_to(right) for p in right.rglob("*") if p.is_file()}
    return sorted(
        str(n)
        for n in names
        if "__pycache__" not in n.parts
        and not ((left / n).exists() and (right / n).exists() and filecmp.cmp(left / n, right / n))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if services/api is stale")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = differences(Path(tmp), OUT)
        if stale:
            sys.exit("generated code is stale; run `make protos`: " + ", ".join(stale))
        print("generated protobuf code is up to date")
        return
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    generate(OUT)


if __name__ == "__main__":
    main()
