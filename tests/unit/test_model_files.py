"""The committed models match their configs, pipelines and metrics (onnxruntime only, no torch).

For each ONNX model: the outputs Triton is told about exist with the right shapes; the class
activation map obeys ``mean(cam) + bias == logit`` on real test images; metrics.json describes
this very file (hash, test AUC recomputed from its logits) and the pipeline's threshold is the
card's operating point. For the ensemble: its steps wire every member into the combiner, its
contract equals cxr_pneumonia's, and the combiner's weighting reproduces the reported AUC.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import medmnist_test_split
from tritonclient.grpc import model_config_pb2

from services.common.pipelines import PipelineRegistry
from services.triton_local.repository import read_config

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"
PIPELINES = ROOT / "pipelines"
ENSEMBLE = "cxr_pneumonia_ensemble"
COMBINER = "cxr_ensemble_combiner"
MEMBERS = ("cxr_pneumonia_m1", "cxr_pneumonia_m2", "cxr_pneumonia_m3")
CAM_MODELS = ("cxr_pneumonia", "us_breast")


@cache
def session(model: str) -> ort.InferenceSession:
    path = REPOSITORY / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def metrics(model: str, version: str = "1") -> dict[str, Any]:
    """A version's metrics: metrics.json for version 1, metrics_v<N>.json for later ones."""
    name = "metrics.json" if version == "1" else f"metrics_v{version}.json"
    data: dict[str, Any] = json.loads((REPOSITORY / model / name).read_text())
    return data


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties."""
    ordered = np.sort(score)
    ranks = np.searchsorted(ordered, score, "left") + np.searchsorted(ordered, score, "right") + 1
    ranks = ranks / 2
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def combiner() -> ModuleType:
    path = REPOSITORY / COMBINER / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("combiner_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", [*CAM_MODELS, *MEMBERS])
def test_onnx_outputs_match_the_triton_config(model: str) -> None:
    sess = session(model)
    [image] = sess.get_inputs()
    assert (image.name, image.type, image.shape[1:]) == ("image", "tensor(float)", [1, 28, 28])
    config = read_config(REPOSITORY / model / "config.pbtxt")
    assert config.name == model
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [1, 28, 28])]
    want = {"logits": [1], "cam": [1, 7, 7], "ood": [1]} if model in CAM_MODELS else {"logits": [1]}
    assert [o.name for o in sess.get_outputs()] == list(want)
    assert {o.name: list(o.dims) for o in config.output} == want
    assert all(o.data_type == model_config_pb2.TYPE_FP32 for o in config.output)
    [warmup] = config.model_warmup
    assert warmup.batch_size == 1 and list(warmup.inputs) == ["image"]
    assert list(warmup.inputs["image"].dims) == [1, 28, 28]


@pytest.mark.parametrize("model", CAM_MODELS)
def test_cam_mean_plus_bias_is_the_logit(model: str) -> None:
    x, _ = medmnist_test_split(model)
    logits, cam = session(model).run(["logits", "cam"], {"image": x[:8]})
    assert logits.shape == (8, 1) and logits.dtype == np.float32
    assert cam.shape == (8, 1, 7, 7) and cam.dtype == np.float32
    bias = metrics(model)["cam_bias"]
    np.testing.assert_allclose(cam.mean(axis=(1, 2, 3)) + bias, logits[:, 0], atol=1e-5, rtol=0)
    assert np.ptp(cam) > 0  # a map, not a constant


@pytest.mark.parametrize("model", [*CAM_MODELS, *MEMBERS])
def test_metrics_describe_the_committed_file(model: str) -> None:
    m = metrics(model)
    path = REPOSITORY / model / "1" / "model.onnx"
    assert m["model"] == model
    assert m["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    x, y = medmnist_test_split(model)
    logits = session(model).run(["logits"], {"image": x})[0][:, 0]
    assert auc(y, logits) == pytest.approx(m["test_auc"], abs=2e-6)
    lo, hi = m["test_auc_ci95"]
    assert lo <= m["test_auc"] <= hi
    assert 0 <= m["test_ece"] <= 1
    assert sum(row["count"] for row in m["test_reliability"]) == len(y)


@pytest.mark.parametrize(("model", "minimum"), [("cxr_pneumonia", 0.96), ("us_breast", 0.91)])
def test_test_auc_meets_its_goal(model: str, minimum: float) -> None:
    assert metrics(model)["test_auc"] >= minimum


@pytest.mark.parametrize("model", [*CAM_MODELS, ENSEMBLE])
def test_pipeline_uses_the_model_outputs_and_operating_point(model: str) -> None:
    pipeline = PipelineRegistry.load(PIPELINES).get(model)
    config = read_config(REPOSITORY / model / "config.pbtxt")
    assert pipeline.model.name == model
    assert set(pipeline.model.outputs) <= {o.name for o in config.output}
    # The version the pipeline asks for is served, and its own card gives the operating point.
    served = list(config.version_policy.specific.versions) or [1]
    version = pipeline.model.version or str(max(served))  # empty: the latest served
    assert int(version) in served
    assert (REPOSITORY / model / version).is_dir()
    [rule] = pipeline.postprocess.findings
    card = metrics(model, version)
    assert card["model"] == model
    assert rule.threshold == pytest.approx(card["operating_threshold"], abs=1e-6)


def test_breast_finding_is_malignancy() -> None:
    [rule] = PipelineRegistry.load(PIPELINES).get("us_breast").postprocess.findings
    assert (rule.concept.code, rule.concept.coding_scheme) == ("254837009", "SCT")
    assert rule.heatmap_output == "cam"
    # Positive class = malignant: malignant test images score higher than the others.
    x, y = medmnist_test_split("us_breast")
    logits = session("us_breast").run(["logits"], {"image": x})[0][:, 0]
    assert logits[y == 1].mean() > logits[y == 0].mean()


def test_ensemble_has_the_cxr_contract_and_wires_every_member() -> None:
    ensemble = read_config(REPOSITORY / ENSEMBLE / "config.pbtxt")
    single = read_config(REPOSITORY / "cxr_pneumonia" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    assert list(ensemble.input) == list(single.input)
    assert list(ensemble.output) == [o for o in single.output if o.name == "logits"]
    assert ensemble.max_batch_size == single.max_batch_size
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [*MEMBERS, COMBINER]
    for i, step in enumerate(steps[:-1]):
        assert dict(step.input_map) == {"image": "image"}
        assert dict(step.output_map) == {"logits": f"logits_{i}"}
        member = read_config(REPOSITORY / step.model_name / "config.pbtxt")
        assert member.max_batch_size >= ensemble.max_batch_size
    combine = steps[-1]
    assert dict(combine.input_map) == {f"logits_{i}": f"logits_{i}" for i in range(len(MEMBERS))}
    assert dict(combine.output_map) == {"logits": "logits"}
    config = read_config(REPOSITORY / COMBINER / "config.pbtxt")
    assert config.backend == "python"
    assert sorted(i.name for i in config.input) == sorted(combine.input_map)
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [1])]


def test_ensemble_pipeline_feeds_the_members_what_they_were_trained_on() -> None:
    registry = PipelineRegistry.load(PIPELINES)
    ensemble, single = registry.get(ENSEMBLE), registry.get("cxr_pneumonia")
    assert ensemble.preprocess == single.preprocess
    assert ensemble.match == single.match
    # Opt-in only: chest radiographs keep routing to the single model (with its heatmaps).
    assert not ensemble.auto_route and single.auto_route


def test_combiner_weighting() -> None:
    module = combiner()
    config = {
        "input": [{"name": "logits_0"}, {"name": "logits_1"}],
        "parameters": {"weights": {"string_value": "[3, 1]"}},
    }
    weights = module.parse_weights(config)
    np.testing.assert_allclose(weights, [0.75, 0.25])
    a = np.array([[1.0], [-2.0]], np.float32)
    b = np.array([[5.0], [2.0]], np.float32)
    out = module.weighted_average([a, b], weights)
    assert out.dtype == np.float32 and out.shape == (2, 1)
    np.testing.assert_allclose(out, [[2.0], [-1.0]])
    for bad in ("[1]", "[1, -1]", "[0, 0]", "[1, 2, 3]"):
        with pytest.raises(ValueError):
            module.parse_weights({**config, "parameters": {"weights": {"string_value": bad}}})
    with pytest.raises(ValueError, match="weights"):
        module.parse_weights({"input": config["input"], "parameters": {}})


def test_ensemble_metrics_follow_from_members_and_weights() -> None:
    module = combiner()
    config = read_config(REPOSITORY / COMBINER / "config.pbtxt")
    as_json = {
        "input": [{"name": i.name} for i in config.input],
        "parameters": {"weights": {"string_value": config.parameters["weights"].string_value}},
    }
    weights = module.parse_weights(as_json)
    m = metrics(ENSEMBLE)
    assert list(m["members"]) == list(MEMBERS)
    np.testing.assert_allclose([m["weights"][name] for name in MEMBERS], weights)
    x, y = medmnist_test_split(MEMBERS[0])
    member_logits = [session(name).run(["logits"], {"image": x})[0] for name in MEMBERS]
    combined = module.weighted_average(member_logits, weights)[:, 0]
    assert auc(y, combined) == pytest.approx(m["test_auc"], abs=2e-6)
    for name in MEMBERS:
        assert m["members"][name]["test_auc"] == metrics(name)["test_auc"]
