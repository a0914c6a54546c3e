"""Routing's way out through the real stack: a corpus ultrasound without BodyPartExamined is
refused when routed and analysed when its pipeline is named (audited, and warned about in the
answer); a gateway with IMAGING_BODY_PART_ALIASES routes a site-specific value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import grpc
import pydicom
import pytest
from conftest import gateway_beside

from services.api.imaging.v1 import findings_pb2, gateway_pb2, gateway_pb2_grpc
from services.cli.audit_verify import verify
from services.cli.stack import Stack
from services.common.audit import AuditKey
from services.gateway import server as gateway_server

pytestmark = pytest.mark.integration

# Greyscale (MONOCHROME2) ultrasound, no BodyPartExamined and no PatientAge (MANIFEST.csv).
ULTRASOUND = "pydicom-data/JPGLosslessP14SV1_1s_1f_8b.dcm"


@pytest.fixture(scope="module")
def ultrasound(dicom_dir: Path) -> bytes:
    data = (dicom_dir / ULTRASOUND).read_bytes()
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    assert ds.Modality == "US" and not ds.get("BodyPartExamined")
    return data


def _audit_record(stack: Stack, request_id: str) -> dict[str, object]:
    records = [json.loads(line) for line in stack.audit_log.read_text().splitlines()]
    (record,) = [r for r in records if r.get("request_id") == request_id]
    return record


def test_an_ultrasound_without_body_part_runs_only_when_its_pipeline_is_named(
    gateway: gateway_pb2_grpc.GatewayStub, stack: Stack, ultrasound: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Analyze(
            gateway_pb2.AnalyzeRequest(instances=[ultrasound], client_request_id="us-routed"),
            timeout=60,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "us_breast: BodyPartExamined is empty" in (refused.value.details() or "")
    routed = _audit_record(stack, "us-routed")
    assert routed["status"] == "FAILED_PRECONDITION"
    assert (routed["pipeline_named"], routed["routing_overridden"]) == (False, [])

    response = gateway.Analyze(
        gateway_pb2.AnalyzeRequest(
            instances=[ultrasound], pipeline="us_breast", client_request_id="us-named"
        ),
        timeout=60,
    )
    assert response.pipeline == "us_breast" and response.model.name == "us_breast"
    (warning,) = [w for w in response.warnings if "named by the caller" in w]
    assert "BodyPartExamined" in warning
    # The intended use still applies: no PatientAge, so the finding is not a decision.
    (finding,) = response.findings
    assert finding.status == findings_pb2.FINDING_STATUS_INDETERMINATE
    assert any("patient age unknown" in c.detail for c in response.caveats)
    named = _audit_record(stack, "us-named")
    assert named["status"] == "OK" and named["pipeline"] == "us_breast"
    assert (named["pipeline_named"], named["routing_overridden"]) == (True, ["BodyPartExamined"])
    assert verify(stack.audit_log, AuditKey.from_file(stack.audit_key_file)) == []


def test_a_named_pipeline_never_takes_another_modality(
    gateway: gateway_pb2_grpc.GatewayStub, ultrasound: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Analyze(
            gateway_pb2.AnalyzeRequest(instances=[ultrasound], pipeline="cxr_pneumonia"),
            timeout=60,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Modality is 'US'" in (refused.value.details() or "")


@pytest.fixture(scope="module")
def mapped_gateway(stack: Stack) -> Iterator[gateway_pb2_grpc.GatewayStub]:
    """A gateway beside the session stack that maps the site value BRST to BREAST."""
    settings = gateway_beside(
        stack,
        max_message_bytes=16 * 2**20,
        body_part_aliases={"Brst": "BREAST"},
    )
    running = gateway_server.start(settings)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)
    running.stop(0)


def test_a_mapped_site_value_routes_without_a_name(
    gateway: gateway_pb2_grpc.GatewayStub,
    mapped_gateway: gateway_pb2_grpc.GatewayStub,
    ultrasound: bytes,
) -> None:
    ds = pydicom.dcmread(BytesIO(ultrasound))
    ds.BodyPartExamined = "BRST"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    study = gateway_pb2.AnalyzeRequest(instances=[out.getvalue()])
    with pytest.raises(grpc.RpcError) as refused:  # the session gateway has no mapping
        gateway.Analyze(study, timeout=60)
    assert "BodyPartExamined is 'BRST'" in (refused.value.details() or "")
    response = mapped_gateway.Analyze(study, timeout=60)
    assert response.pipeline == "us_breast"
    assert not [w for w in response.warnings if "named by the caller" in w]
