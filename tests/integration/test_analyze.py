"""End-to-end through the real stack: gateway -> decoder/preprocessor -> Triton -> postprocessor."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from conftest import CHEST_FILES, MEDMNIST_DIR, REPO_ROOT
from synthetic import chest_image

from services.api.imaging.v1 import (
    decoder_pb2,
    decoder_pb2_grpc,
    findings_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    preprocessor_pb2,
    preprocessor_pb2_grpc,
)
from services.cli.client import stream_messages
from services.cli.stack import Stack
from services.common import tensors

pytestmark = pytest.mark.integration
MODEL = REPO_ROOT / "model_repository" / "cxr_pneumonia" / "2" / "model.onnx"


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def _service_batch(stack: Stack, dicom: bytes) -> np.ndarray:
    """The model input as the decoder and preprocessor services compute it."""
    big = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.decoder}", options=big) as channel:
        image = (
            decoder_pb2_grpc.DicomDecoderStub(channel)
            .Decode(decoder_pb2.DecodeRequest(dicom=dicom))
            .image
        )
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.preprocessor}", options=big) as channel:
        reply = preprocessor_pb2_grpc.PreprocessorStub(channel).Preprocess(
            preprocessor_pb2.PreprocessRequest(pipeline="cxr_pneumonia", images=[image])
        )
    return tensors.from_proto(reply.batch)


@pytest.mark.parametrize("name", CHEST_FILES)
def test_real_chest_xray_probability_equals_onnxruntime(
    name: str,
    dicom_dir: Path,
    stack: Stack,
    gateway: gateway_pb2_grpc.GatewayStub,
    session: ort.InferenceSession,
) -> None:
    dicom = (dicom_dir / name).read_bytes()
    response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom]))
    assert response.pipeline == "cxr_pneumonia"
    assert (response.model.name, response.model.version) == ("cxr_pneumonia", "2")
    assert {t.stage for t in response.timings} >= {
        "decode",
        "preprocess",
        "infer",
        "postprocess",
        "total",
    }
    [finding] = response.findings
    assert finding.display_name == "Pneumonia" and finding.code == "233604007"
    batch = _service_batch(stack, dicom)
    assert batch.shape == (1, 1, 28, 28)
    expected = float(_sigmoid(session.run(["logits"], {"image": batch})[0])[0, 0])
    assert finding.probability == pytest.approx(expected, abs=1e-5)
    # Adults' radiographs (or of unknown age): the model was trained on children aged 1-5, so
    # the finding is no decision and the study stays ROUTINE whatever the probability.
    assert finding.status == findings_pb2.FINDING_STATUS_INDETERMINATE and not finding.positive
    reasons = {c.reason: c.detail for c in finding.caveats}
    assert "patient age" in reasons[findings_pb2.CAVEAT_REASON_OUTSIDE_INTENDED_USE]
    assert finding.ood_threshold > 0  # v2 scores its own distance from the training data
    assert response.triage_priority == findings_pb2.TRIAGE_PRIORITY_ROUTINE


def test_a_childs_radiograph_gets_a_decision_and_an_adults_is_refused_where_the_pipeline_says(
    dicom_dir: Path, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    from services.cli.samples import pneumoniamnist_samples

    for name, dicom in pneumoniamnist_samples(MEDMNIST_DIR / "pneumoniamnist_28_reconstructed.npz"):
        response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom]))
        [finding] = response.findings
        assert not finding.caveats and not response.caveats
        assert finding.positive == (finding.probability >= finding.threshold)
        expected = (
            findings_pb2.FINDING_STATUS_POSITIVE
            if finding.positive
            else findings_pb2.FINDING_STATUS_NEGATIVE
        )
        assert finding.status == expected, name
    adult = (dicom_dir / CHEST_FILES[0]).read_bytes()
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Analyze(
            gateway_pb2.AnalyzeRequest(instances=[adult], pipeline="cxr_pneumonia_ensemble")
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "outside intended use: patient age outside 1-5 years" in details
    assert "64" not in details  # the patient's age is never quoted


def _training_module():
    """The training script's data module (torch-free), loaded as the script itself loads it."""
    spec = importlib.util.spec_from_file_location(
        "cxr_dataset", REPO_ROOT / "scripts" / "cxr_dataset.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_service_preprocessing_reproduces_training_preprocessing(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayStub, session: ort.InferenceSession
) -> None:
    images = np.load(MEDMNIST_DIR / "pneumoniamnist_28_reconstructed.npz")["test_images"][:6]
    expected = _training_module().training_tensor(images)
    for image, trained in zip(images, expected, strict=True):
        dicom = chest_image(image)
        served = _service_batch(stack, dicom)
        np.testing.assert_array_equal(served[0], trained)
        response = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom]))
        logit = session.run(["logits"], {"image": trained[None]})[0]
        assert response.findings[0].probability == pytest.approx(
            float(_sigmoid(logit)[0, 0]), abs=1e-5
        )


def test_study_above_the_message_limit_streams(
    dicom_dir: Path, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    instance = (dicom_dir / CHEST_FILES[0]).read_bytes()
    study = [instance] * 3
    assert sum(map(len, study)) > 20 * 1024 * 1024
    with pytest.raises(grpc.RpcError) as caught:
        gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=study))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    header = gateway_pb2.AnalyzeHeader(client_request_id="big-study-1")
    response = gateway.AnalyzeStream(stream_messages(study, header))
    assert response.request_id == "big-study-1"
    assert len(response.findings) == 3
    assert len({round(f.probability, 6) for f in response.findings}) == 1


def test_urgent_priority_is_accepted_and_client_request_id_echoed(
    dicom_dir: Path, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    request = gateway_pb2.AnalyzeRequest(
        instances=[(dicom_dir / CHEST_FILES[1]).read_bytes()],
        pipeline="cxr_pneumonia",
        priority=gateway_pb2.REQUEST_PRIORITY_URGENT,
        client_request_id="ris-order-42",
    )
    response = gateway.Analyze(request)
    assert response.request_id == "ris-order-42"
    assert len(response.findings) == 1


def test_list_pipelines(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    listed = gateway.ListPipelines(gateway_pb2.ListPipelinesRequest()).pipelines
    by_name = {info.name: info for info in listed}
    assert {"cxr_pneumonia", "mri_brain_extraction"} <= set(by_name)
    assert "Modality in ['CR', 'DX']" in by_name["cxr_pneumonia"].accepts
    assert by_name["mri_brain_extraction"].model.name == "mri_brain_extraction"
    assert {n for n, info in by_name.items() if not info.auto_route} == {"cxr_pneumonia_ensemble"}
    for info in by_name.values():  # each model's card, as its served Triton config carries it
        assert info.card.name == info.model.name and len(info.card.intended_use) > 20
        assert info.card.card_reference.endswith("MODEL_CARD.md") and info.card.metrics
        assert info.intended_use.population and info.intended_use.outside in {"refuse", "flag"}
    chest = by_name["cxr_pneumonia"].intended_use
    assert (chest.age_years.min, chest.age_years.max) == (1, 5)
    assert list(chest.view_positions) == ["PA", "AP"]


def test_heatmaps_are_left_out_unless_asked_for(
    dicom_dir: Path, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    dicom = (dicom_dir / CHEST_FILES[0]).read_bytes()
    [plain] = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[dicom])).findings
    options = gateway_pb2.OutputOptions(heatmaps=True)
    [drawn] = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(instances=[dicom], options=options)
    ).findings
    assert plain.heatmap_png == b"" and drawn.heatmap_png.startswith(b"\x89PNG")
    assert plain.probability == drawn.probability  # the same model call either way


def test_findings_carry_a_heatmap_png_of_the_image_size(
    dicom_dir: Path, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    import io

    import pydicom
    from PIL import Image

    path = dicom_dir / CHEST_FILES[2]
    options = gateway_pb2.OutputOptions(heatmaps=True)
    response = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(instances=[path.read_bytes()], options=options)
    )
    [finding] = response.findings
    image = Image.open(io.BytesIO(finding.heatmap_png))
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert image.format == "PNG" and image.mode == "RGBA"
    scale = min(1.0, 256 / max(header.Columns, header.Rows))  # the image's shape, capped
    assert image.size == (round(header.Columns * scale), round(header.Rows * scale))
    alpha = np.asarray(image)[..., 3]
    # The overlay covers where the model looked and leaves the rest (the cropped margins) clear.
    assert alpha.max() > 50 and (alpha == 0).any()
