"""A relay speaking for a DICOM sender, over real gRPC: a gateway with API keys, a client
policy and an audit trail, beside the session stack. Only a key whose policy has
``assert_origin: true`` may send an Origin (audited as origin_ae/origin_address, judged by the
``dicom:<AE title>`` entry); a malformed one is INVALID_ARGUMENT, unquoted; the same uid_seed
gives the same SR SOP Instance UID."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import grpc
import pydicom
import pytest
from conftest import gateway_beside
from error_cases import good_chest

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.audit_verify import verify
from services.cli.stack import Stack
from services.common.audit import AuditKey
from services.gateway import server as gateway_server

pytestmark = pytest.mark.integration

KEYS = {"ingest": "key-of-the-ingest-relay", "reading-room": "key-of-the-reading-room"}
POLICY = """
ingest:
  assert_origin: true
reading-room: {}
"dicom:CT_ROOM_2":
  pipelines: [us_breast]
"""
CT1 = gateway_pb2.Origin(calling_ae_title="CT_ROOM_1  ", source_address="10.1.2.3")
SR = gateway_pb2.OutputOptions(dicom_sr=True)


@pytest.fixture(scope="module")
def relay(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The gateway's address and its audit trail (its key is "k" * 64)."""
    workdir = tmp_path_factory.mktemp("relay")
    keys = workdir / "api-keys"
    keys.write_text(
        "".join(f"{name} {hashlib.sha256(k.encode()).hexdigest()}\n" for name, k in KEYS.items())
    )
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    (workdir / "audit-key").write_text("k" * 64)
    settings = gateway_beside(
        stack,
        api_keys_file=keys,
        client_policy_file=policy,
        audit_log=workdir / "audit.jsonl",
        audit_key_file=workdir / "audit-key",
    )
    running = gateway_server.start(settings)
    yield f"127.0.0.1:{running.port}", workdir / "audit.jsonl"
    running.stop(0)


@pytest.fixture(scope="module")
def stub(relay: tuple[str, Path]) -> Iterator[gateway_pb2_grpc.GatewayStub]:
    with grpc.insecure_channel(relay[0]) as channel:
        yield gateway_pb2_grpc.GatewayStub(channel)


def _as(client: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[client]}"),)


def _record(audit: Path, request_id: str) -> dict[str, object]:
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    (record,) = [r for r in records if r.get("request_id") == request_id]
    return record


def _stream(header: gateway_pb2.AnalyzeHeader, study: list[bytes]) -> Iterator[object]:
    yield gateway_pb2.AnalyzeChunk(header=header)
    for index, data in enumerate(study):
        yield gateway_pb2.AnalyzeChunk(
            chunk=gateway_pb2.InstanceChunk(instance_index=index, data=data)
        )


def test_the_relay_may_assert_an_origin_and_it_is_audited(
    stub: gateway_pb2_grpc.GatewayStub, relay: tuple[str, Path]
) -> None:
    header = gateway_pb2.AnalyzeHeader(client_request_id="relayed-1", origin=CT1)
    reply = stub.AnalyzeStream(_stream(header, [good_chest()]), metadata=_as("ingest"), timeout=60)
    assert reply.pipeline == "cxr_pneumonia"
    record = _record(relay[1], "relayed-1")
    assert record["status"] == "OK" and record["client"] == "ingest"
    assert (record["origin_ae"], record["origin_address"]) == ("CT_ROOM_1", "10.1.2.3")
    stub.Analyze(
        gateway_pb2.AnalyzeRequest(instances=[good_chest()], client_request_id="direct-1"),
        metadata=_as("reading-room"),
        timeout=60,
    )
    assert (_record(relay[1], "direct-1")["origin_ae"]) == ""
    assert verify(relay[1], AuditKey(b"k" * 64)) == []


def test_a_client_without_assert_origin_is_refused(
    stub: gateway_pb2_grpc.GatewayStub, relay: tuple[str, Path]
) -> None:
    request = gateway_pb2.AnalyzeRequest(
        instances=[good_chest()], origin=CT1, client_request_id="not-a-relay"
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Analyze(request, metadata=_as("reading-room"), timeout=60)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "assert_origin: true" in (caught.value.details() or "")
    record = _record(relay[1], "not-a-relay")
    assert record["status"] == "PERMISSION_DENIED" and record["origin_ae"] == ""


def test_a_malformed_origin_is_invalid_and_not_quoted(stub: gateway_pb2_grpc.GatewayStub) -> None:
    for origin in (
        gateway_pb2.Origin(calling_ae_title="BAD\\TITLE", source_address="10.1.2.3"),
        gateway_pb2.Origin(calling_ae_title="CT_ROOM_1", source_address="scanner.example"),
    ):
        header = gateway_pb2.AnalyzeHeader(origin=origin)
        with pytest.raises(grpc.RpcError) as caught:
            stub.AnalyzeStream(_stream(header, [good_chest()]), metadata=_as("ingest"), timeout=60)
        details = caught.value.details() or ""
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "TITLE" not in details and "scanner" not in details


def test_an_origins_own_entry_applies(stub: gateway_pb2_grpc.GatewayStub) -> None:
    origin = gateway_pb2.Origin(calling_ae_title="CT_ROOM_2", source_address="10.1.2.4")
    with pytest.raises(grpc.RpcError) as caught:
        stub.Analyze(
            gateway_pb2.AnalyzeRequest(instances=[good_chest()], origin=origin),
            metadata=_as("ingest"),
            timeout=60,
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "studies from this origin may not run pipeline 'cxr_pneumonia'" in (
        caught.value.details() or ""
    )


def test_the_same_uid_seed_gives_the_same_sr(stub: gateway_pb2_grpc.GatewayStub) -> None:
    study = [good_chest()]

    def sr_uid(seed: str, client: str = "reading-room") -> str:
        reply = stub.Analyze(
            gateway_pb2.AnalyzeRequest(instances=study, options=SR, uid_seed=seed),
            metadata=_as(client),
            timeout=60,
        )
        (sr,) = [o for o in reply.outputs if o.kind == "dicom_sr"]
        assert pydicom.dcmread(BytesIO(sr.data)).SOPInstanceUID == sr.sop_instance_uid
        return sr.sop_instance_uid

    first = sr_uid("acc-1:run")
    assert first.startswith("2.25.")
    assert sr_uid("acc-1:run") == first
    assert sr_uid("acc-1:run", "ingest") == first  # the seed, not the caller, decides
    assert sr_uid("acc-2:run") != first
    assert sr_uid("") != sr_uid("")
    with pytest.raises(grpc.RpcError) as caught:
        sr_uid("no spaces allowed")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
