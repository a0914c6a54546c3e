"""The Dockerfile's instructions, parsed once for every test that reads it (supply chain, the
version, the exposed ports): continuation lines joined, comments dropped, stages counted."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    logical = ""
    stage = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, " ".join(args.split()), stage))
        logical = ""
    assert not logical, "Dockerfile ends inside a continuation"
    return result


def parsed() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def labels() -> dict[str, str]:
    """LABEL key=value pairs of every stage."""
    return {
        key: value
        for i in parsed()
        if i.keyword == "LABEL"
        for key, _, value in (pair.partition("=") for pair in shlex.split(i.args))
    }


def exposed_ports() -> set[int]:
    return {
        int(port.split("/")[0])
        for i in parsed()
        if i.keyword == "EXPOSE"
        for port in i.args.split()
    }
