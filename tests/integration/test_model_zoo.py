"""The 2-D models and the ensemble, scored through the running platform and Triton."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from conftest import MEDMNIST_DIR, REPO_ROOT
from sklearn.metrics import roc_auc_score
from synthetic import chest_image

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack

pytestmark = pytest.mark.integration
MODELS = REPO_ROOT / "model_repository"
CASES = {
    # model: (npz, modality, body part, positive label -> y)
    "cxr_pneumonia": ("pneumoniamnist_28_reconstructed.npz", "CR", "CHEST", False),
    "us_breast": ("breastmnist_28.npz", "US", "BREAST", True),  # label 0 = malignant
}


@pytest.mark.parametrize("model", CASES)
def test_full_test_split_through_the_platform_gives_the_cards_auc(
    model: str, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    npz, modality, body_part, inverted = CASES[model]
    data = np.load(MEDMNIST_DIR / npz)
    images, labels = data["test_images"], data["test_labels"].reshape(-1)
    y = 1 - labels if inverted else labels
    probabilities = []
    for start in range(0, len(images), 64):
        study = [
            chest_image(image, modality=modality, body_part=body_part)
            for image in images[start : start + 64]
        ]
        response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=study))
        assert response.pipeline == model
        probabilities += [f.probability for f in response.findings]
    card = json.loads((MODELS / model / "metrics.json").read_text())
    assert roc_auc_score(y, probabilities) == pytest.approx(card["test_auc"], abs=0.005)


def test_ensemble_in_triton_equals_the_weighted_members(stack: Stack) -> None:
    images = np.load(MEDMNIST_DIR / "pneumoniamnist_28_reconstructed.npz")["test_images"][:16]
    batch = ((images.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    client = triton.InferenceServerClient(stack.triton_grpc_address)
    inputs = [triton.InferInput("image", list(batch.shape), "FP32")]
    inputs[0].set_data_from_numpy(batch)
    served = client.infer("cxr_pneumonia_ensemble", inputs).as_numpy("logits")
    members = [
        ort.InferenceSession(str(MODELS / f"cxr_pneumonia_m{i}" / "1" / "model.onnx")).run(
            ["logits"], {"image": batch}
        )[0]
        for i in (1, 2, 3)
    ]
    np.testing.assert_allclose(served, np.mean(members, axis=0), atol=1e-5)
