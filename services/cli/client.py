"""A small client for the public Gateway API, used by the CLI, demo, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import tls
from services.common.tls import PLAINTEXT, TlsFiles

CHUNK_BYTES = 1024 * 1024
# Above this a study is streamed in chunks instead of sent as one message.
DOCUMENTS = ("sr", "seg", "heatmap", "fhir")
STREAM_ABOVE_BYTES = 16 * 1024 * 1024


def stream_messages(
    instances: Sequence[bytes], header: gateway_pb2.AnalyzeHeader, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[gateway_pb2.AnalyzeChunk]:
    yield gateway_pb2.AnalyzeChunk(header=header)
    for index, data in enumerate(instances):
        for start in range(0, max(len(data), 1), chunk_bytes):
            yield gateway_pb2.AnalyzeChunk(
                chunk=gateway_pb2.InstanceChunk(
                    instance_index=index, data=data[start : start + chunk_bytes]
                )
            )


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <key>`` to every call."""

    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    def _with_key(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)


class GatewayClient:
    """``files``: mutual TLS (IMAGING_TLS_CA and the client pair); ``api_key``: sent as
    ``authorization: Bearer`` on every call."""

    def __init__(
        self,
        address: str,
        timeout: float = 120.0,
        files: TlsFiles = PLAINTEXT,
        api_key: str = "",
    ) -> None:
        # Responses carry heatmaps and masks: allow more than gRPC's 4 MB default.
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        credentials = tls.channel_credentials(files)
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        if api_key:
            bearer = _Bearer(api_key)
            self.channel = grpc.intercept_channel(self.channel, bearer)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self._timeout = timeout

    def analyze(
        self,
        instances: Sequence[bytes],
        pipeline: str = "",
        priority: gateway_pb2.RequestPriority = gateway_pb2.REQUEST_PRIORITY_UNSPECIFIED,
        client_request_id: str = "",
        heatmaps: bool = False,
        masks: bool = False,
        documents: Sequence[str] = (),
        report_refusal: bool = False,
    ) -> gateway_pb2.AnalyzeResponse:
        """One message for small studies, a client stream for large ones. ``documents``: any
        of "sr", "seg", "heatmap", "fhir" (DICOM SR, SEG, Secondary Capture, FHIR)."""
        unknown = set(documents) - set(DOCUMENTS)
        if unknown:
            raise ValueError(f"unknown documents {sorted(unknown)}; choose from {DOCUMENTS}")
        options = gateway_pb2.OutputOptions(
            heatmaps=heatmaps,
            masks=masks,
            dicom_sr="sr" in documents,
            dicom_seg="seg" in documents,
            dicom_heatmap="heatmap" in documents,
            fhir="fhir" in documents,
            report_refusal=report_refusal,
        )
        if sum(len(i) for i in instances) <= STREAM_ABOVE_BYTES:
            request = gateway_pb2.AnalyzeRequest(
                instances=list(instances),
                pipeline=pipeline,
                priority=priority,
                client_request_id=client_request_id,
                options=options,
            )
            response: gateway_pb2.AnalyzeResponse = self.stub.Analyze(
                request, timeout=self._timeout
            )
            return response
        header = gateway_pb2.AnalyzeHeader(
            pipeline=pipeline,
            priority=priority,
            client_request_id=client_request_id,
            options=options,
        )
        streamed: gateway_pb2.AnalyzeResponse = self.stub.AnalyzeStream(
            stream_messages(instances, header), timeout=self._timeout
        )
        return streamed

    def pipelines(self) -> gateway_pb2.ListPipelinesResponse:
        listed: gateway_pb2.ListPipelinesResponse = self.stub.ListPipelines(
            gateway_pb2.ListPipelinesRequest(), timeout=self._timeout
        )
        return listed

    def close(self) -> None:
        self.channel.close()
