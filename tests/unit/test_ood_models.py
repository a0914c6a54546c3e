"""Every version of every 28x28 model serves what its config says, including the ``ood`` score.

Checks (onnxruntime only, no torch): each version folder's ONNX outputs equal the config's
outputs; version 1 of ``cxr_pneumonia`` still computes the logits it always did (its weights
predate the ``ood`` output); the OOD threshold in each version's metrics file is the config's
card metric; the ``ood`` output flags blank images that the test images are not flagged like.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import medmnist_test_split

from services.triton_local.repository import read_config

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
OOD_MODELS = ("cxr_pneumonia", "us_breast")
ONNX_MODELS = sorted(
    p.parent.name
    for p in REPOSITORY.glob("*/config.pbtxt")
    if read_config(p).platform == "onnxruntime_onnx"
)
# The first test-split logits of cxr_pneumonia version 1 as committed before the ood output was
# added, and its test AUC and operating threshold: the version-1 weights must never change.
CXR_V1_FIRST_LOGITS = [
    6.971054553985596,
    2.726252555847168,
    4.321024417877197,
    -8.430219650268555,
    6.9683403968811035,
    6.841937065124512,
]
CXR_V1_TEST_AUC = 0.96602
CXR_V1_THRESHOLD = 0.679311


def versions(model: str) -> list[int]:
    config = read_config(REPOSITORY / model / "config.pbtxt")
    return list(config.version_policy.specific.versions) or [1]


def version_cases(models: tuple[str, ...] | list[str]) -> list[tuple[str, int]]:
    return [(m, v) for m in models for v in versions(m)]


@cache
def session(model: str, version: int) -> ort.InferenceSession:
    path = REPOSITORY / model / str(version) / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metrics(model: str, version: int) -> dict[str, Any]:
    name = "metrics.json" if version == 1 else f"metrics_v{version}.json"
    data: dict[str, Any] = json.loads((REPOSITORY / model / name).read_text())
    return data


def card_metric(model: str, version: int, key: str) -> float:
    config = read_config(REPOSITORY / model / "config.pbtxt")
    prefix = "card.metric." if version == 1 else f"card.v{version}.metric."
    return float(config.parameters[prefix + key].string_value)


@pytest.mark.parametrize(("model", "version"), version_cases(ONNX_MODELS))
def test_every_version_has_the_configs_outputs(model: str, version: int) -> None:
    config = read_config(REPOSITORY / model / "config.pbtxt")
    folders = sorted(int(p.name) for p in (REPOSITORY / model).iterdir() if p.name.isdigit())
    assert folders == versions(model)
    outputs = session(model, version).get_outputs()
    assert [o.name for o in outputs] == [o.name for o in config.output]
    for onnx_output, declared in zip(outputs, config.output, strict=True):
        assert onnx_output.shape[1:] == list(declared.dims), declared.name


def test_cxr_version_1_logits_are_unchanged() -> None:
    x, y = medmnist_test_split("cxr_pneumonia")
    logits = session("cxr_pneumonia", 1).run(["logits"], {"image": x})[0][:, 0]
    np.testing.assert_allclose(logits[:6], CXR_V1_FIRST_LOGITS, rtol=0, atol=1e-6)
    m = metrics("cxr_pneumonia", 1)
    assert (m["test_auc"], m["operating_threshold"]) == (CXR_V1_TEST_AUC, CXR_V1_THRESHOLD)
    pos, neg = logits[y == 1], logits[y == 0]
    mann_whitney = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg)
    )
    assert round(float(mann_whitney), 6) == CXR_V1_TEST_AUC


@pytest.mark.parametrize(("model", "version"), version_cases(OOD_MODELS))
def test_ood_threshold_is_the_card_metric(model: str, version: int) -> None:
    m = metrics(model, version)
    assert m["outputs"]["ood"] == [1]
    assert card_metric(model, version, "ood_threshold") == pytest.approx(
        m["ood_threshold"], abs=1e-6
    )
    assert m["ood_acceptance_rate_val"] == pytest.approx(0.95, abs=0.01)


@pytest.mark.parametrize(("model", "version"), version_cases(OOD_MODELS))
def test_ood_flags_blank_images_not_test_images(model: str, version: int) -> None:
    x, _ = medmnist_test_split(model)
    threshold = metrics(model, version)["ood_threshold"]
    sess = session(model, version)
    ood_test = sess.run(["ood"], {"image": x})[0][:, 0]
    blank = np.stack([np.full((1, 28, 28), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    ood_blank = sess.run(["ood"], {"image": blank})[0][:, 0]
    assert np.all(np.isfinite(ood_test)) and np.all(ood_test >= 0)
    assert (ood_test <= threshold).mean() > 0.8
    assert np.all(ood_blank > threshold)
    assert ood_blank.min() > np.median(ood_test)
