"""Shared fixtures: the real DICOM corpus and one real local stack per test session."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.api.imaging.v1 import gateway_pb2_grpc
from services.cli.stack import Ports, Stack
from services.common.pipelines import PipelineRegistry
from services.common.settings import GatewaySettings
from services.preprocessor.core import training_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
DICOM_DIR = REPO_ROOT.parent / "shared" / "data" / "dicom"
MEDMNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "medmnist"
CHEST_FILES = (
    "pydicom-data/RG1_UNCR.dcm",
    "pydicom-data/RG1_J2KI.dcm",
    "pylibjpeg-data/JPEG2000Lossless/966_fixed.dcm",
)
# The 2-D models and the MedMNIST test split each is scored on: model -> (file, pipeline it is
# served through, labels inverted?). BreastMNIST's label 0 is malignant, the positive class.
MEDMNIST_TEST_SPLITS = {
    "cxr_pneumonia": ("pneumoniamnist_28_reconstructed.npz", "cxr_pneumonia", False),
    "us_breast": ("breastmnist_28.npz", "us_breast", True),
    **{
        f"cxr_pneumonia_m{i}": ("pneumoniamnist_28_reconstructed.npz", "cxr_pneumonia", False)
        for i in (1, 2, 3)
    },
}


@cache
def medmnist_test_split(model: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's test split as its training script saw it: (x [N,1,28,28], y 1 = positive)."""
    filename, pipeline, inverted = MEDMNIST_TEST_SPLITS[model]
    path = MEDMNIST_DIR / filename
    if not path.exists():
        pytest.fail(f"MedMNIST file {path} not found; shared data must sit beside the repo")
    data = np.load(path)
    spec = PipelineRegistry.load(REPO_ROOT / "pipelines").get(pipeline)
    y = data["test_labels"].reshape(-1).astype(np.int64)
    return training_batch(data["test_images"], spec), (1 - y if inverted else y)


def gateway_beside(stack: Stack, **overrides: object) -> GatewaySettings:
    """Settings of an extra in-process gateway on free ports that dials the stack's inner
    services and Triton; ``overrides`` are the setting under test."""
    defaults: dict[str, object] = {
        "port": 0,
        "metrics_port": 0,
        "decoder_address": f"127.0.0.1:{stack.ports.decoder}",
        "preprocessor_address": f"127.0.0.1:{stack.ports.preprocessor}",
        "postprocessor_address": f"127.0.0.1:{stack.ports.postprocessor}",
        "triton_address": stack.triton_grpc_address,
    }
    return GatewaySettings(**(defaults | overrides))  # type: ignore[arg-type]


# Gateway and inner services accept at most this per message in the test stack, so that a
# > 20 MB study must use AnalyzeStream.
TEST_MESSAGE_LIMIT = 16 * 1024 * 1024


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    if not (DICOM_DIR / "MANIFEST.csv").exists():
        pytest.fail(f"DICOM corpus not found at {DICOM_DIR}; shared data must sit beside the repo")
    return DICOM_DIR


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """tritonserver + decoder + preprocessor + postprocessor + gateway, on free ports."""
    running = Stack(
        run_dir=tmp_path_factory.mktemp("stack"),
        ports=Ports.free(),
        extra_env={
            "IMAGING_MAX_MESSAGE_BYTES": str(TEST_MESSAGE_LIMIT),
            "IMAGING_MAX_PIXELS": str(40_000_000),
            "IMAGING_MAX_INSTANCES": "100",
        },
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[gateway_pb2_grpc.GatewayStub]:
    options = [
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ]
    with grpc.insecure_channel(stack.gateway_address, options=options) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)
