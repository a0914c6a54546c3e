"""Every shipped model version has a golden answer, and it is the model's own.

The goldens were recorded through tritonserver (scripts/make_goldens.py); here each ONNX file
is run directly with onnxruntime on the golden input, an independent path, and must give the
recorded sample far inside the rollout's tolerance. Versions without an ONNX file (the
ensemble, the python-backend combiner) are checked for presence only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from services.fleet import golden

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
VERSIONS = sorted(
    (model.name, int(version.name))
    for model in REPOSITORY.iterdir()
    if (model / "config.pbtxt").is_file()
    for version in model.iterdir()
    if version.is_dir() and version.name.isdigit()
)


def test_the_repository_has_versions_to_check() -> None:
    assert ("cxr_pneumonia", 2) in VERSIONS and len(VERSIONS) >= 8


@pytest.mark.parametrize(("model", "version"), VERSIONS, ids=[f"{m}-v{v}" for m, v in VERSIONS])
def test_every_version_has_a_golden_answer_its_onnx_file_gives(model: str, version: int) -> None:
    answer = golden.answer(REPOSITORY, model, version)
    assert answer is not None, f"{model} v{version}: no golden answer (scripts/make_goldens.py)"
    assert answer.outputs and answer.atol <= 0.05
    onnx_file = REPOSITORY / model / str(version) / "model.onnx"
    if not onnx_file.is_file():
        return
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    wanted = [o.name for o in session.get_outputs() if o.name in answer.outputs]
    assert wanted, f"{model} v{version}: the golden names no output of the ONNX file"
    results = session.run(wanted, answer.input_arrays())
    outputs = dict(zip(wanted, (np.asarray(r) for r in results), strict=True))
    strict = answer.model_copy(update={"atol": 1e-4, "rtol": 1e-4})
    assert strict.mismatch(outputs) is None


def test_a_different_answer_is_a_mismatch_naming_the_output_and_the_distance() -> None:
    answer = golden.answer(REPOSITORY, "cxr_pneumonia", 2)
    assert answer is not None
    shifted = {
        name: np.zeros(sample.shape, np.float32) + 1.0 for name, sample in answer.outputs.items()
    }
    why = answer.mismatch(shifted)
    assert why is not None and "differs from the golden answer by up to" in why
    assert answer.mismatch({}) is not None
