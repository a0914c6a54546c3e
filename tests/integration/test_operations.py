"""Health, reflection, metrics and log hygiene on every service of the real stack."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from synthetic import PATIENT_ID, PATIENT_NAME, chest_image, dataset, to_bytes

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import SERVICES, Ports, Stack

pytestmark = pytest.mark.integration
FULL_NAMES = {
    "gateway": "imaging.v1.Gateway",
    "decoder": "imaging.v1.DicomDecoder",
    "preprocessor": "imaging.v1.Preprocessor",
    "postprocessor": "imaging.v1.Postprocessor",
}


@pytest.mark.parametrize("service", SERVICES)
def test_health_and_reflection_answer(stack: Stack, service: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.grpc(service)}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", FULL_NAMES[service]):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {FULL_NAMES[service], "grpc.health.v1.Health"} <= services


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def _count(text: str, metric: str, **labels: str) -> float:
    pattern = metric + r"\{" + "".join(f'(?=[^}}]*{k}="{v}")' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if re.match(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_show_stage_histograms_and_status_counters(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[chest_image(np.zeros((8, 8), np.uint8))]))
    with pytest.raises(grpc.RpcError):
        gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[b"not dicom"]))
    text = _metrics(stack.ports.metrics["gateway"])
    for stage in ("decode", "preprocess", "infer", "postprocess", "total"):
        assert (
            _count(text, "imaging_stage_duration_seconds_count", service="gateway", stage=stage)
            >= 1
        ), stage
    assert _count(text, "imaging_rpc_total", method="Analyze", code="OK") >= 1
    assert _count(text, "imaging_rpc_total", method="Analyze", code="INVALID_ARGUMENT") >= 1
    assert "imaging_rpc_duration_seconds_bucket" in text
    for service, stage in (
        ("decoder", "decode"),
        ("preprocessor", "preprocess"),
        ("postprocessor", "postprocess"),
    ):
        inner = _metrics(stack.ports.metrics[service])
        assert (
            _count(inner, "imaging_stage_duration_seconds_count", service=service, stage=stage) >= 1
        )


def test_patient_identity_never_reaches_the_logs(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    good = chest_image(np.full((16, 16), 7, np.uint8))
    broken = dataset(np.zeros((16, 16), np.uint8))
    broken.PixelData = broken.PixelData[:10]
    gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[good]))
    with pytest.raises(grpc.RpcError):
        gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[to_bytes(broken)]))
    logs = "".join(p.read_text(errors="replace") for p in (stack.run_dir / "logs").glob("*.log"))
    assert "Analyze OK" in logs  # the logs are being written...
    assert PATIENT_NAME not in logs and "SECRET" not in logs  # ...without identity
    assert PATIENT_ID not in logs


def test_stack_can_run_tritonserver_alone(tmp_path: Path) -> None:
    """Benchmarks of Triton itself start no platform services (Stack(services=()))."""
    alone = Stack(run_dir=tmp_path, ports=Ports.free(), services=())
    alone.start()
    try:
        assert set(alone.pids) == {"tritonserver"}
        client = tritonclient.grpc.InferenceServerClient(alone.triton_grpc_address)
        assert client.is_model_ready("cxr_pneumonia")
        # Nothing listens where the gateway would.
        with grpc.insecure_channel(alone.gateway_address) as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    finally:
        alone.stop()
    assert alone.pids == {}
