"""No test sleeps and then asserts: waits poll observable state with a deadline.

Scans every Python file under tests/ (its syntax tree, so comments, strings and a function
merely passed along, like ``pool.run(time.sleep, 60)``, do not count) for calls of
``time.sleep`` and ``asyncio.sleep`` (however imported) outside tests/waiting.py, and for a
deliberate ``pause`` followed directly by an assert.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# File (relative to tests/) -> why it may call sleep itself. Keep this short.
ALLOWED = {
    "waiting.py": "the wait helpers themselves: wait_until polls, pause says why",
    "integration/offered_load.py": "paces offered load (requests per second), asserts nothing",
}
SLEEPS = {("time", "sleep"), ("asyncio", "sleep")}
PAUSES = {"pause", "async_pause"}


def _sleep_names(tree: ast.Module) -> set[str]:
    """Local names bound to a sleep function (``from time import sleep as nap``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "asyncio"):
            names |= {a.asname or a.name for a in node.names if a.name == "sleep"}
    return names


def _is_sleep(call: ast.Call, bare: set[str]) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        named = func.id in bare
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        named = (func.value.id, func.attr) in SLEEPS
    else:
        return False
    # asyncio.sleep(0) hands the loop to other tasks: a scheduling point, no wall-clock time.
    zero = bool(call.args) and isinstance(call.args[0], ast.Constant) and call.args[0].value == 0
    return named and not zero


def _calls_pause(statement: ast.stmt) -> bool:
    value = statement.value if isinstance(statement, ast.Expr) else None
    if isinstance(value, ast.Await):
        value = value.value
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return name in PAUSES


def sleeps_in(path: Path, root: Path = TESTS) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bare = _sleep_names(tree)
    return [
        f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _is_sleep(node, bare)
    ]


def pauses_then_asserts_in(path: Path, root: Path = TESTS) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for first, second in itertools.pairwise(block):
                if _calls_pause(first) and isinstance(second, ast.Assert):
                    found.append(f"{path.relative_to(root)}:{second.lineno}")
    return found


def test_no_test_sleeps_outside_the_wait_helpers() -> None:
    found = [
        line
        for path in sorted(TESTS.rglob("*.py"))
        if path.relative_to(TESTS).as_posix() not in ALLOWED
        for line in sleeps_in(path)
    ]
    assert found == [], "poll with waiting.wait_until (or waiting.pause, saying why)"


def test_no_pause_is_followed_by_an_assert() -> None:
    found = [line for path in sorted(TESTS.rglob("*.py")) for line in pauses_then_asserts_in(path)]
    assert found == [], "a pause then an assert is a guess at timing: wait_until the state"


def test_the_scan_sees_every_spelling(tmp_path: Path) -> None:
    """The scanner itself: what it must find and what it must let pass."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import time, asyncio\n"
        "from time import sleep as nap\n"
        "time.sleep(1)\n"
        "nap(0.5)\n"
        "async def f():\n"
        "    await asyncio.sleep(2)\n"
        "    await asyncio.sleep(0)\n"  # a scheduling point: allowed
        "run(time.sleep, 60)\n"  # passed along, not called here: allowed
        "# time.sleep(3) in a comment: allowed\n"
        "def g():\n"
        "    pause(1, 'why')\n"
        "    assert done\n"
    )
    lines = [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in sleeps_in(probe, tmp_path)]
    assert lines == ["3", "4", "6"]
    assert [line.rsplit(":", 1)[1] for line in pauses_then_asserts_in(probe, tmp_path)] == ["12"]
