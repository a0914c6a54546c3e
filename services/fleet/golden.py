"""Golden answers: a fixed input per model version and what the version must answer.

A pod counts as rolled out only when the new version, as that pod serves it, answers the
golden input within tolerance: READY says the files loaded, not that they are the right
ones (a mislabelled copy, a broken engine build, a wrong config all load fine).

``model_repository/<model>/golden.json`` holds one entry per version, made by
``scripts/make_goldens.py`` from the served model. The input is not stored: it is drawn from
a seeded generator (``seed``), so a 128^3 volume costs a number. Outputs are stored as a sample
of at most :data:`MAX_SAMPLES` elements at fixed flat indices, enough to catch a different
model, small enough to review in a diff. The tolerance allows TensorRT's FP16 engines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.common.settings import DEFAULT_MODEL_REPOSITORY

GOLDEN_FILE = "golden.json"
MAX_SAMPLES = 4096
DEFAULT_REPOSITORY = DEFAULT_MODEL_REPOSITORY
_DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64}


class TensorSample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: tuple[int, ...]
    indices: tuple[int, ...]
    values: tuple[float, ...]


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shape: tuple[int, ...]
    datatype: str = Field(pattern="^(FP32|FP16|INT32|INT64)$")


class GoldenAnswer(BaseModel):
    """One version's golden input (by seed) and answer (sampled)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    inputs: tuple[InputSpec, ...]
    outputs: dict[str, TensorSample]
    atol: float = Field(gt=0)
    rtol: float = Field(ge=0)

    def input_arrays(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return {
            spec.name: rng.standard_normal(spec.shape).astype(_DTYPES[spec.datatype])
            for spec in self.inputs
        }

    def mismatch(self, outputs: Mapping[str, np.ndarray]) -> str | None:
        """Why ``outputs`` are not this answer; None when they are, within tolerance."""
        for name, expected in self.outputs.items():
            got = outputs.get(name)
            if got is None:
                return f"no output {name!r}"
            if tuple(got.shape) != expected.shape:
                return f"output {name!r} has shape {tuple(got.shape)}, not {expected.shape}"
            values = got.ravel()[list(expected.indices)].astype(np.float64)
            wanted = np.asarray(expected.values, dtype=np.float64)
            if not np.allclose(values, wanted, atol=self.atol, rtol=self.rtol):
                worst = float(np.max(np.abs(values - wanted)))
                return (
                    f"output {name!r} differs from the golden answer by up to {worst:.4g} "
                    f"(tolerance atol {self.atol:g}, rtol {self.rtol:g})"
                )
        return None


class GoldenFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    versions: dict[int, GoldenAnswer]


def sample(array: np.ndarray) -> TensorSample:
    """At most MAX_SAMPLES elements of ``array`` at evenly spread flat indices."""
    flat = array.ravel()
    if flat.size <= MAX_SAMPLES:
        indices = np.arange(flat.size)
    else:
        indices = np.unique(np.linspace(0, flat.size - 1, MAX_SAMPLES).astype(np.int64))
    return TensorSample(
        shape=tuple(int(d) for d in array.shape),
        indices=tuple(int(i) for i in indices),
        values=tuple(float(v) for v in flat[indices].astype(np.float64)),
    )


def load(repository: Path, model: str) -> GoldenFile | None:
    path = repository / model / GOLDEN_FILE
    if not path.is_file():
        return None
    return GoldenFile.model_validate(json.loads(path.read_text()))


def answer(repository: Path, model: str, version: int) -> GoldenAnswer | None:
    """The golden answer of ``model`` ``version``, None when the repository has none."""
    found = load(repository, model)
    return None if found is None else found.versions.get(version)


def write(repository: Path, model: str, golden: GoldenFile) -> Path:
    path = repository / model / GOLDEN_FILE
    path.write_text(json.dumps(golden.model_dump(mode="json"), indent=1) + "\n")
    return path
