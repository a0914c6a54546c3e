"""The 2-D models and the ensemble, scored through the running platform and Triton."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pydicom
import pytest
import tritonclient.grpc as triton
from conftest import MEDMNIST_DIR, REPO_ROOT
from sklearn.metrics import roc_auc_score
from synthetic import chest_image

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack
from services.common.pipelines import PipelineRegistry
from services.preprocessor.core import training_batch

pytestmark = pytest.mark.integration
MODELS = REPO_ROOT / "model_repository"
MEMBERS = ("cxr_pneumonia_m1", "cxr_pneumonia_m2", "cxr_pneumonia_m3")
CASES = {
    # pipeline = model: (npz, modality, body part, positive label -> y)
    "cxr_pneumonia": ("pneumoniamnist_28_reconstructed.npz", "CR", "CHEST", False),
    "us_breast": ("breastmnist_28.npz", "US", "BREAST", True),  # label 0 = malignant
    # Opt-in pipeline: requested by name.
    "cxr_pneumonia_ensemble": ("pneumoniamnist_28_reconstructed.npz", "DX", "CHEST", False),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x.astype(np.float64))))


def _analyze(
    gateway: gateway_pb2_grpc.GatewayStub, pipeline: str, images: np.ndarray
) -> list[float]:
    """Each image as a DICOM instance of one study; the findings' probabilities, in order."""
    _, modality, body_part, _ = CASES[pipeline]
    study = [chest_image(image, modality=modality, body_part=body_part) for image in images]
    routed = pipeline != "cxr_pneumonia_ensemble"
    response = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(instances=study, pipeline="" if routed else pipeline)
    )
    assert response.pipeline == pipeline
    sent = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID for d in study]
    assert [f.sop_instance_uid for f in response.findings] == sent  # one finding each, in order
    return [f.probability for f in response.findings]


def _version(model: str) -> str:
    """The version a pipeline of that name serves (members of the ensemble: 1)."""
    registry = PipelineRegistry.load(REPO_ROOT / "pipelines")
    named = [p for p in registry.all() if p.name == model]
    return named[0].model.version if named else "1"


def _metrics(model: str) -> dict[str, float]:
    version = _version(model)
    name = "metrics.json" if version == "1" else f"metrics_v{version}.json"
    loaded: dict[str, float] = json.loads((MODELS / model / name).read_text())
    return loaded


def _onnx_logits(model: str, x: np.ndarray) -> np.ndarray:
    path = MODELS / model / _version(model) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"image": x})[0][:, 0])


@pytest.mark.parametrize("pipeline", CASES)
def test_full_test_split_through_the_platform_gives_the_cards_auc(
    pipeline: str, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    npz, _, _, inverted = CASES[pipeline]
    data = np.load(MEDMNIST_DIR / npz)
    images, labels = data["test_images"], data["test_labels"].reshape(-1)
    y = 1 - labels if inverted else labels
    probabilities = []
    for start in range(0, len(images), 64):
        probabilities += _analyze(gateway, pipeline, images[start : start + 64])
    card = _metrics(pipeline)
    assert roc_auc_score(y, probabilities) == pytest.approx(card["test_auc"], abs=0.005)


@pytest.mark.parametrize("pipeline", CASES)
def test_served_probability_equals_onnxruntime_on_the_training_input(
    pipeline: str, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    """The platform (DICOM -> services -> Triton) against onnxruntime on the training tensor."""
    npz = CASES[pipeline][0]
    images = np.load(MEDMNIST_DIR / npz)["test_images"][:32]
    served = _analyze(gateway, pipeline, images)
    x = training_batch(images, PipelineRegistry.load(REPO_ROOT / "pipelines").get(pipeline))
    if pipeline == "cxr_pneumonia_ensemble":  # equal weights on the members' logits
        logits = np.mean([_onnx_logits(m, x) for m in MEMBERS], axis=0)
    else:
        logits = _onnx_logits(pipeline, x)
    np.testing.assert_allclose(served, _sigmoid(logits), atol=1e-5, rtol=0)


def test_ensemble_in_triton_equals_the_weighted_members(stack: Stack) -> None:
    images = np.load(MEDMNIST_DIR / "pneumoniamnist_28_reconstructed.npz")["test_images"][:16]
    batch = ((images.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    client = triton.InferenceServerClient(stack.triton_grpc_address)
    inputs = [triton.InferInput("image", list(batch.shape), "FP32")]
    inputs[0].set_data_from_numpy(batch)
    served = client.infer("cxr_pneumonia_ensemble", inputs).as_numpy("logits")
    members = [_onnx_logits(m, batch) for m in MEMBERS]
    np.testing.assert_allclose(served[:, 0], np.mean(members, axis=0), atol=1e-5)
