"""The README's runnable examples run as written, in order, as a new user would run them.

Blocks marked ``<!-- runnable -->`` are joined into one bash script and run with ``set -e`` from
a copy of the checkout (its entries symlinked, ``../shared`` beside it, a fresh ``.run/``), so
a renamed flag, a missing sample file or a wrong path fails here. The examples start their own
stacks on the default ports (as the README's commands do); every stack they leave is stopped.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from services.cli.stack import Ports, Stack

README = REPO_ROOT / "README.md"
MARKER = "<!-- runnable -->"
# Written by the examples: a fresh copy of each in the test's checkout, never the real one's.
NOT_LINKED = {".run", "samples", "results", "results-brain", "demo-output", ".git"}


def runnable_blocks(text: str) -> list[str]:
    return re.findall(rf"{re.escape(MARKER)}\n```bash\n(.*?)```", text, flags=re.DOTALL)


def test_the_marked_blocks_are_found_and_each_is_a_bash_block() -> None:
    text = README.read_text()
    blocks = runnable_blocks(text)
    assert len(blocks) == text.count(MARKER) >= 5  # a marker before anything else is a typo


def default_ports_in_use() -> list[int]:
    ports = Ports()
    taken = []
    for port in (ports.gateway, ports.triton_grpc, ports.triton_http, *ports.metrics.values()):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    return taken


def checkout_copy(root: Path) -> Path:
    """``root/checkout`` whose entries link to the repository's, with ``root/shared`` beside it."""
    checkout = root / "checkout"
    checkout.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (checkout / entry.name).symlink_to(entry)
    (root / "shared").symlink_to(REPO_ROOT.parent / "shared")
    return checkout


def test_the_readme_examples_run_as_written(tmp_path: Path) -> None:
    taken = default_ports_in_use()
    if taken:
        pytest.fail(
            f"the README's examples use the default ports; {taken} are taken: stop that stack"
        )
    checkout = checkout_copy(tmp_path)
    script = "set -euo pipefail\n" + "\n".join(runnable_blocks(README.read_text()))
    env = os.environ | {"IMAGING_RUN_DIR": str(checkout / ".run")}
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
    finally:
        for state in checkout.glob(".run/**/stack.json"):
            Stack.from_state(state.parent).stop()
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"README examples failed (exit {done.returncode}):\n{output[-4000:]}"
    )
    assert "Traceback" not in output
    # What the examples claim to make, made:
    assert len(list((checkout / "samples" / "brain-phantom").glob("*.dcm"))) == 64
    assert list((checkout / "results").rglob("*.json")) and list(
        checkout.glob("results-brain/**/*")
    )
    assert "imaging.v1.Gateway" in done.stdout  # grpcurl list through reflection
    assert '"findings"' in done.stdout  # grpcurl's Analyze answer, as JSON
    assert int(done.stdout.strip().splitlines()[-1]) > 20  # kinds counted in the rendered chart
    assert not list(checkout.glob(".run/**/stack.json")), "an example left a stack running"
