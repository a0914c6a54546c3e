"""Every error class of the whole tree has a kind of its own, fleet errors included.

The gateway re-raises an inner service's error by code and kind (errors.from_kind), and
callers and logs tell errors apart by kind: a class that inherits its parent's kind, or reuses
another's, is reported as that other class. The tree is found by reading the source, so a
subclass defined in any module of services/ takes part even if nothing imported it yet.
"""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from pathlib import Path

from services.common import errors

SERVICES = Path(__file__).resolve().parents[2] / "services"


def _tree() -> list[type[errors.PlatformError]]:
    """The platform's classes (a test's own subclass, e.g. a fussy pickling case, is not)."""
    _modules_defining_errors()
    return [cls for cls in errors.all_classes() if cls.__module__.startswith("services.")]


def _base_names(node: ast.ClassDef) -> set[str]:
    names = set()
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def _modules_defining_errors() -> set[str]:
    """Modules of services/ with a class deriving (by name) from a class of the tree; the
    tree grows as they are imported, so repeat until no new module turns up."""
    trees = {
        path: ast.parse(path.read_text(), filename=str(path)) for path in SERVICES.rglob("*.py")
    }
    found: set[str] = set()
    while True:
        names = {cls.__name__ for cls in errors.all_classes()}
        new = set()
        for path, tree in trees.items():
            module = ".".join(path.relative_to(SERVICES.parent).with_suffix("").parts)
            if module in found:
                continue
            classes = (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))
            if any(_base_names(node) & names for node in classes):
                new.add(module)
        if not new:
            return found
        for module in new:
            importlib.import_module(module)
        found |= new


def test_error_modules_are_found() -> None:
    modules = _modules_defining_errors()
    assert {"services.common.errors", "services.fleet.errors"} <= modules
    fleet = {
        cls.__name__ for cls in errors.all_classes() if cls.__module__.startswith("services.fleet")
    }
    assert {"NoTritonPods", "PodCallFailed", "RolloutFailed", "RollbackIncomplete"} <= fleet


def test_every_class_names_its_own_kind() -> None:
    inherited = [cls.__qualname__ for cls in _tree() if "kind" not in vars(cls)]
    assert inherited == [], "these classes inherit their parent's kind"


def test_kinds_are_unique_across_the_whole_tree() -> None:
    tree = _tree()
    kinds = Counter(cls.kind for cls in tree)
    reused = {
        kind: sorted(f"{c.__module__}.{c.__qualname__}" for c in tree if c.kind == kind)
        for kind, count in kinds.items()
        if count > 1
    }
    assert reused == {}


def test_every_kind_maps_back_to_its_class() -> None:
    """What the gateway relies on: kind and code name exactly one class."""
    for cls in _tree():
        assert errors.from_kind(cls.kind, cls.code) is cls
        assert cls.kind.isupper() and cls.kind.replace("_", "").isalpha(), cls.kind
        assert isinstance(cls.code, errors.Status)
