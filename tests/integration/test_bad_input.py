"""Every kind of bad input gets its gRPC status and a readable reason; serving goes on."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import gateway_beside
from ports import refused_port
from pydicom.encaps import encapsulate
from pydicom.uid import UID
from synthetic import chest_image, dataset, to_bytes
from waiting import wait_until

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.cli.stack import Stack
from services.gateway import server as gateway_server

pytestmark = pytest.mark.integration
OK_IMAGE = np.full((32, 32), 100, np.uint8)


def _no_pixels() -> bytes:
    return to_bytes(dataset(None))


def _truncated() -> bytes:
    ds = dataset(np.zeros((64, 64), np.uint16), bits_stored=12)
    ds.PixelData = ds.PixelData[:1000]
    return to_bytes(ds)


def _unsupported_syntax() -> bytes:
    ds = dataset(OK_IMAGE)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def _huge_header() -> bytes:
    ds = dataset(np.zeros((8, 8), np.uint16), bits_stored=12)
    ds.Rows, ds.Columns = 10_000, 10_000  # 100 M pixels > the test stack's 40 M limit
    return to_bytes(ds)


CASES: dict[str, tuple[Callable[[], list[bytes]], str, grpc.StatusCode, str]] = {
    "empty request": (lambda: [], "", grpc.StatusCode.INVALID_ARGUMENT, "no DICOM instances"),
    "empty instance": (lambda: [b""], "", grpc.StatusCode.INVALID_ARGUMENT, "instance 0 is empty"),
    "not DICOM": (
        lambda: [b"GIF89a" + bytes(500)],
        "",
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a DICOM file",
    ),
    "gzip": (
        lambda: [gzip.compress(chest_image(OK_IMAGE))],
        "",
        grpc.StatusCode.INVALID_ARGUMENT,
        "gzip",
    ),
    "no pixel data": (
        lambda: [_no_pixels()],
        "",
        grpc.StatusCode.INVALID_ARGUMENT,
        "no Pixel Data",
    ),
    "truncated pixels": (lambda: [_truncated()], "", grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
    "unsupported syntax": (
        lambda: [_unsupported_syntax()],
        "",
        grpc.StatusCode.INVALID_ARGUMENT,
        "1.2.840.10008.1.2.4.100",
    ),
    "image too large": (
        lambda: [_huge_header()],
        "",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the limit is 40,000,000",
    ),
    "too many instances": (
        lambda: [chest_image(OK_IMAGE)] * 101,
        "",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit is 100",
    ),
    "unknown pipeline": (
        lambda: [chest_image(OK_IMAGE)],
        "mammo_v9",
        grpc.StatusCode.NOT_FOUND,
        "unknown pipeline 'mammo_v9'",
    ),
    "no pipeline accepts": (
        lambda: [chest_image(OK_IMAGE, body_part="KNEE")],
        "",
        grpc.StatusCode.FAILED_PRECONDITION,
        "BodyPartExamined is 'KNEE'",
    ),
    "named pipeline refuses the study": (
        lambda: [chest_image(OK_IMAGE, modality="US", body_part="BREAST")],
        "cxr_pneumonia",
        grpc.StatusCode.FAILED_PRECONDITION,
        "pipeline 'cxr_pneumonia' does not accept this study",
    ),
    "wrong channel count": (lambda: [_rgb()], "", grpc.StatusCode.INVALID_ARGUMENT, "1-channel"),
}


def _rgb() -> bytes:
    ds = dataset(OK_IMAGE)
    pixels = np.zeros((32, 32, 3), np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = pixels.tobytes()
    return to_bytes(ds)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_status_and_reason_and_serving_goes_on(
    case: str, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    make, pipeline, code, phrase = CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=make(), pipeline=pipeline))
    assert caught.value.code() == code, caught.value.details()
    assert phrase in (caught.value.details() or "")
    after = gateway.Analyze(gateway_pb2.AnalyzeRequest(instances=[chest_image(OK_IMAGE)]))
    assert len(after.findings) == 1


def test_a_huge_pipeline_name_is_not_found_and_stays_out_of_the_log(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayStub
) -> None:
    """A 1 MB name once came back as RESOURCE_EXHAUSTED (the quoted name overflowed the
    status) and added a megabyte to the gateway log."""
    log = stack.run_dir / "logs" / "gateway.log"
    start = log.stat().st_size
    request = gateway_pb2.AnalyzeRequest(instances=[chest_image(OK_IMAGE)], pipeline="z" * 2**20)
    with pytest.raises(grpc.RpcError) as caught:
        gateway.Analyze(request)
    details = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, details[:200]
    assert len(details.encode()) < 1024 and "unknown pipeline 'zzz" in details

    def logged() -> list[bytes]:
        with log.open("rb") as lines:
            lines.seek(start)
            written = lines.read().splitlines()
        return written if any(b"NOT_FOUND" in line for line in written) else []

    written = wait_until(logged, 10, "the refusal was never logged")
    assert any(b"Analyze NOT_FOUND" in line for line in written), written[-5:]
    assert all(len(line) < 1024 for line in written), max(len(line) for line in written)


def test_stream_must_start_with_a_header(gateway: gateway_pb2_grpc.GatewayStub) -> None:
    def chunks() -> Iterator[gateway_pb2.AnalyzeChunk]:
        yield gateway_pb2.AnalyzeChunk(chunk=gateway_pb2.InstanceChunk(data=b"DICM"))

    with pytest.raises(grpc.RpcError) as caught:
        gateway.AnalyzeStream(chunks())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must start with an AnalyzeHeader" in (caught.value.details() or "")


def test_triton_down_is_unavailable(stack: Stack, dicom_dir: Path) -> None:
    """A gateway whose Triton address has nothing listening answers UNAVAILABLE, not INTERNAL."""
    with refused_port() as dead:
        settings = gateway_beside(stack, triton_address=f"127.0.0.1:{dead}", call_timeout_seconds=5)
        running = gateway_server.start(settings)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                request = gateway_pb2.AnalyzeRequest(instances=[chest_image(OK_IMAGE)])
                for _ in range(2):  # and it stays up after the failure
                    with pytest.raises(grpc.RpcError) as caught:
                        stub.Analyze(request)
                    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "inference server" in (caught.value.details() or "")
        finally:
            running.stop(0)
