"""Calls from the gateway to the inner services and Triton.

This is the one seam where foreign errors (grpc.RpcError, tritonclient's
InferenceServerException) become PlatformErrors: an inner service's INVALID_ARGUMENT keeps its
code and reason; a peer that cannot be reached becomes UNAVAILABLE naming which one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from services.api.imaging.v1 import (
    decoder_pb2,
    decoder_pb2_grpc,
    postprocessor_pb2,
    postprocessor_pb2_grpc,
    preprocessor_pb2,
    preprocessor_pb2_grpc,
)
from services.common import errors, tensors
from services.common.convert import (
    geometry_to_proto,
    grid_from_proto,
    grid_to_proto,
    image_from_proto,
    image_to_proto,
    prepared_from_proto,
    priority_from_proto,
    segmentation_from_proto,
)
from services.common.images import DecodedImage, Preprocessed
from services.common.interceptor import REQUEST_ID_HEADER
from services.postprocessor.core import Assessment, Finding
from services.postprocessor.measurements import Measurement

T = TypeVar("T")

_PASS_THROUGH: dict[grpc.StatusCode, type[errors.PlatformError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.TooLarge,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.NoMatchingPipeline,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
}


# Spread calls over every address the target resolves to (a headless Service's pods, or an
# `ipv4:a,b` list) instead of pinning one connection; see the chart's peer Services.
_ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", _ROUND_ROBIN),
    ]


def _translate_rpc(peer: str, err: grpc.RpcError) -> errors.PlatformError:
    code, details = err.code(), err.details() or ""
    if code in _PASS_THROUGH:
        return _PASS_THROUGH[code](details)
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.DependencyUnavailable(f"{peer} is unavailable: {details}")
    return errors.InternalError(f"{peer} failed ({code.name}): {details}")


class _ServiceClient:
    """A channel to one inner service with deadline and request-id forwarding."""

    def __init__(self, peer: str, address: str, timeout: float, max_message_bytes: int) -> None:
        self._peer = peer
        self._timeout = timeout
        self.channel = grpc.insecure_channel(address, options=channel_options(max_message_bytes))

    def call(self, method: Callable[..., T], request: object, request_id: str) -> T:
        try:
            return method(
                request, timeout=self._timeout, metadata=((REQUEST_ID_HEADER, request_id),)
            )
        except grpc.RpcError as err:
            raise _translate_rpc(self._peer, err) from None

    def close(self) -> None:
        self.channel.close()


class DecoderClient(_ServiceClient):
    def __init__(self, address: str, timeout: float, max_message_bytes: int) -> None:
        super().__init__("decoder", address, timeout, max_message_bytes)
        self._stub = decoder_pb2_grpc.DicomDecoderStub(self.channel)

    def decode(self, dicom: bytes, request_id: str) -> DecodedImage:
        reply = self.call(self._stub.Decode, decoder_pb2.DecodeRequest(dicom=dicom), request_id)
        return image_from_proto(reply.image)


class PreprocessorClient(_ServiceClient):
    def __init__(self, address: str, timeout: float, max_message_bytes: int) -> None:
        super().__init__("preprocessor", address, timeout, max_message_bytes)
        self._stub = preprocessor_pb2_grpc.PreprocessorStub(self.channel)

    def preprocess(
        self, pipeline: str, images: Sequence[DecodedImage], request_id: str
    ) -> Preprocessed:
        request = preprocessor_pb2.PreprocessRequest(
            pipeline=pipeline, images=[image_to_proto(i) for i in images]
        )
        reply = self.call(self._stub.Preprocess, request, request_id)
        batch = tensors.from_proto(reply.batch)
        return Preprocessed(
            batch,
            prepared_from_proto(reply.geometries, batch),
            grid_from_proto(reply.volume) if reply.HasField("volume") else None,
        )


class PostprocessorClient(_ServiceClient):
    def __init__(self, address: str, timeout: float, max_message_bytes: int) -> None:
        super().__init__("postprocessor", address, timeout, max_message_bytes)
        self._stub = postprocessor_pb2_grpc.PostprocessorStub(self.channel)

    def postprocess(
        self,
        pipeline: str,
        outputs: Mapping[str, np.ndarray],
        sop_instance_uids: Sequence[str],
        prepared: Preprocessed,
        request_id: str,
    ) -> Assessment:
        request = postprocessor_pb2.PostprocessRequest(
            pipeline=pipeline,
            outputs={name: tensors.to_proto(array) for name, array in outputs.items()},
            sop_instance_uids=list(sop_instance_uids),
            geometries=[geometry_to_proto(p.geometry) for p in prepared.images],
        )
        if prepared.grid is not None:
            request.volume.CopyFrom(grid_to_proto(prepared.grid))
        reply = self.call(self._stub.Postprocess, request, request_id)
        findings = [
            Finding(
                f.code,
                f.coding_scheme,
                f.display_name,
                f.probability,
                f.threshold,
                f.positive,
                f.sop_instance_uid,
                f.heatmap_png,
            )
            for f in reply.findings
        ]
        measurements = [
            Measurement(
                m.code, m.coding_scheme, m.display_name, m.value, m.unit, m.series_instance_uid
            )
            for m in reply.measurements
        ]
        return Assessment(
            findings,
            priority_from_proto(reply.triage_priority),
            measurements,
            [segmentation_from_proto(s) for s in reply.segmentations],
        )


@contextmanager
def _triton_errors(address: str, model: str) -> Iterator[None]:
    try:
        yield
    except InferenceServerException as err:
        status, message = str(err.status() or ""), err.message() or str(err)
        if "UNAVAILABLE" in status:
            raise errors.DependencyUnavailable(
                f"inference server at {address} is unavailable: {message}"
            ) from None
        if "DEADLINE_EXCEEDED" in status:
            raise errors.DeadlineExceeded(f"model {model} did not answer in time") from None
        if "NOT_FOUND" in status or "not found" in message or "unknown model" in message:
            raise errors.DependencyUnavailable(
                f"model {model} is not loaded on the inference server: {message}"
            ) from None
        raise errors.InternalError(f"model {model} rejected the request: {message}") from None


class TritonClient:
    """Inference through Triton's gRPC API, split into batches the model config allows."""

    def __init__(self, address: str, timeout: float) -> None:
        self._address = address
        self._timeout = timeout
        self._client = triton.InferenceServerClient(
            address, channel_args=channel_options(2**31 - 1)
        )
        self._configs: dict[tuple[str, str], model_config_pb2.ModelConfig] = {}
        self._lock = threading.Lock()

    def _config(self, model: str, version: str) -> model_config_pb2.ModelConfig:
        """The served model's config, fetched once per model and version."""
        key = (model, version)
        with self._lock:
            if key not in self._configs:
                with _triton_errors(self._address, model):
                    self._configs[key] = self._client.get_model_config(
                        model, version, client_timeout=self._timeout
                    ).config
            return self._configs[key]

    def max_batch_size(self, model: str, version: str) -> int:
        return max(1, int(self._config(model, version).max_batch_size))

    def model_parameters(self, model: str, version: str) -> dict[str, str]:
        parameters = self._config(model, version).parameters
        return {key: value.string_value for key, value in parameters.items()}

    def infer(
        self,
        model: str,
        version: str,
        input_name: str,
        batch: np.ndarray,
        output_names: Sequence[str],
        priority: int,
        request_id: str,
    ) -> dict[str, np.ndarray]:
        step = self.max_batch_size(model, version)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
        for start in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[start : start + step], dtype=np.float32)
            inputs = [triton.InferInput(input_name, list(chunk.shape), "FP32")]
            inputs[0].set_data_from_numpy(chunk)
            with _triton_errors(self._address, model):
                result = self._client.infer(
                    model,
                    inputs,
                    model_version=version,
                    outputs=[triton.InferRequestedOutput(name) for name in output_names],
                    request_id=request_id,
                    priority=priority,
                    client_timeout=self._timeout,
                )
            for name in output_names:
                array = result.as_numpy(name)
                if array is None:
                    raise errors.InternalError(f"model {model} returned no output {name!r}")
                parts[name].append(array)
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    def close(self) -> None:
        self._client.close()
