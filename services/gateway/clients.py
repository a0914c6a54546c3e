"""Calls from the gateway to the inner services and Triton.

Foreign errors (grpc.RpcError, tritonclient's InferenceServerException) become PlatformErrors
through services/common/remote_errors.py: an inner service's error is re-raised as the class it
raised; a peer that cannot be reached becomes UNAVAILABLE naming which one.

Every call is asyncio (grpc.aio, tritonclient.grpc.aio): the gateway waits on I/O without a
thread per call, and a cancelled study cancels the inner calls it is waiting on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from services.api.imaging.v1 import (
    decoder_pb2_grpc,
    postprocessor_pb2_grpc,
    preprocessor_pb2_grpc,
)
from services.common import convert, errors, tls
from services.common.exchange import PixelExchange
from services.common.images import Decoded, Preprocessed
from services.common.interceptor import REQUEST_ID_HEADER
from services.common.jobs import DecodeJob, PostprocessJob, PreprocessJob
from services.common.listeners import Service
from services.common.remote_errors import from_rpc_error, from_triton_error
from services.common.results import Assessment
from services.common.settings import GatewaySettings
from services.common.tls_files import PLAINTEXT, TlsFiles
from services.gateway import auditing, deadlines

T = TypeVar("T")

# Spread calls over every address the target resolves to (a headless Service's pods, or an
# `ipv4:a,b` list) instead of pinning one connection; see the chart's peer Services. Calls that
# fail with UNAVAILABLE (a peer restarting, a connection reset) or that a stopping peer cancels
# (CANCELLED: it had received them but not started them when its shutdown began) are retried
# with exponential backoff and jitter, three attempts at most and always within the call's
# deadline: every inner call is idempotent (decode, preprocess, postprocess and inference only
# compute). A call the gateway itself cancels is never retried.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ],
    }
)


_DEFAULTS = GatewaySettings.model_fields


@dataclass(frozen=True)
class ChannelTuning:
    """How the gateway's channels notice dead peers and new ones (GatewaySettings).

    Keepalive pings find a peer that stopped answering (a frozen process, a dead node) within
    ``keepalive_seconds + keepalive_timeout_seconds`` instead of leaving calls to wait out
    their deadline; the peers must accept pings that often (ServiceSettings
    .min_ping_interval_seconds, Triton's --grpc-http2-min-recv-ping-interval-without-data),
    or they answer GOAWAY too_many_pings. ``dns_refresh_seconds`` bounds how often a target
    is resolved again: gRPC re-resolves when a connection ends (the peers' max connection age
    ends them), at most this often, so new pods get traffic that soon after they are in DNS.
    """

    # The defaults are GatewaySettings' (IMAGING_KEEPALIVE_SECONDS, ...), declared there once.
    keepalive_seconds: float = _DEFAULTS["keepalive_seconds"].default
    keepalive_timeout_seconds: float = _DEFAULTS["keepalive_timeout_seconds"].default
    dns_refresh_seconds: float = _DEFAULTS["dns_refresh_seconds"].default


def channel_options(
    max_message_bytes: int, tuning: ChannelTuning = ChannelTuning()
) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.service_config", _SERVICE_CONFIG),
        # Reconnect soon after a peer comes back (gRPC's default backoff grows to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", int(tuning.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(tuning.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Without this, gRPC waits minutes between pings when no data came back since the
        # last one: exactly the case of a frozen peer.
        ("grpc.http2.min_time_between_pings_ms", int(tuning.keepalive_seconds * 1000)),
        # A keepalive ping can ride on a flow-control (BDP) ping already in flight; this
        # bounds the wait for any ping's answer, so that case times out too.
        ("grpc.http2.ping_timeout_ms", int(tuning.keepalive_timeout_seconds * 1000)),
        ("grpc.dns_min_time_between_resolutions_ms", int(tuning.dns_refresh_seconds * 1000)),
    ]


def aio_channel(
    address: str,
    max_message_bytes: int,
    files: TlsFiles = PLAINTEXT,
    tuning: ChannelTuning = ChannelTuning(),
) -> grpc.aio.Channel:
    """A channel to a peer: mutual TLS when IMAGING_TLS_CA is set, else plaintext."""
    options = channel_options(max_message_bytes, tuning)
    credentials = tls.channel_credentials(files)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)


class _ServiceClient:
    """A channel to one inner service with deadline and request-id forwarding."""

    def __init__(
        self,
        peer: str,
        address: str,
        timeout: float,
        max_message_bytes: int,
        files: TlsFiles = PLAINTEXT,
        tuning: ChannelTuning = ChannelTuning(),
    ) -> None:
        self._peer = peer
        self._timeout = timeout
        self.channel = aio_channel(address, max_message_bytes, files, tuning)

    async def call(
        self, method: Callable[..., Awaitable[T]], request: object, request_id: str
    ) -> T:
        try:
            return await method(
                request,
                timeout=deadlines.timeout(self._timeout),
                metadata=((REQUEST_ID_HEADER, request_id),),
            )
        except grpc.RpcError as err:
            raise from_rpc_error(self._peer, err) from None

    async def serving(self) -> bool:
        """The peer's own health (grpc.health.v1), for the gateway's readiness."""
        reply = await health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1.0
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self.channel.close()


class DecoderClient(_ServiceClient):
    """Sends each file inline, or through the pixel exchange when the gateway shares one with
    the decoder (then no full-size message follows the client's upload)."""

    def __init__(
        self,
        address: str,
        timeout: float,
        max_message_bytes: int,
        exchange: PixelExchange | None = None,
        files: TlsFiles = PLAINTEXT,
        tuning: ChannelTuning = ChannelTuning(),
    ) -> None:
        super().__init__(Service.DECODER, address, timeout, max_message_bytes, files, tuning)
        self._stub = decoder_pb2_grpc.DicomDecoderStub(self.channel)
        self._exchange = exchange

    async def decode(self, dicom: bytes, request_id: str) -> Decoded:
        shared = self._exchange.put_bytes(dicom) if self._exchange is not None else None
        if shared is None:  # a streamed instance arrives as a bytearray
            job = DecodeJob(dicom=bytes(dicom), shared_output=True)
        else:
            job = DecodeJob(shared_output=True, shared_dicom=shared)
        request = convert.decode_request_to_proto(job)
        try:
            return convert.decode_response_from_proto(
                await self.call(self._stub.Decode, request, request_id)
            )
        finally:
            if shared is not None:
                assert self._exchange is not None
                self._exchange.discard(shared)  # taken by the decoder unless it failed early


class PreprocessorClient(_ServiceClient):
    def __init__(
        self,
        address: str,
        timeout: float,
        max_message_bytes: int,
        files: TlsFiles = PLAINTEXT,
        tuning: ChannelTuning = ChannelTuning(),
    ) -> None:
        super().__init__(Service.PREPROCESSOR, address, timeout, max_message_bytes, files, tuning)
        self._stub = preprocessor_pb2_grpc.PreprocessorStub(self.channel)

    async def preprocess(
        self, pipeline: str, images: Sequence[Decoded], request_id: str
    ) -> Preprocessed:
        request = convert.preprocess_request_to_proto(PreprocessJob(pipeline, tuple(images)))
        return convert.preprocess_response_from_proto(
            await self.call(self._stub.Preprocess, request, request_id)
        )


class PostprocessorClient(_ServiceClient):
    def __init__(
        self,
        address: str,
        timeout: float,
        max_message_bytes: int,
        files: TlsFiles = PLAINTEXT,
        tuning: ChannelTuning = ChannelTuning(),
    ) -> None:
        super().__init__(Service.POSTPROCESSOR, address, timeout, max_message_bytes, files, tuning)
        self._stub = postprocessor_pb2_grpc.PostprocessorStub(self.channel)

    async def postprocess(self, job: PostprocessJob, request_id: str) -> Assessment:
        request = convert.postprocess_request_to_proto(job)
        return convert.postprocess_response_from_proto(
            await self.call(self._stub.Postprocess, request, request_id)
        )


@contextmanager
def _triton_errors(address: str, model: str) -> Iterator[None]:
    try:
        yield
    except InferenceServerException as err:
        raise from_triton_error(address, model, err) from None


class TritonClient:
    """Inference through Triton's gRPC API, split into batches the model config allows."""

    def __init__(
        self,
        address: str,
        timeout: float,
        files: TlsFiles = PLAINTEXT,
        tuning: ChannelTuning = ChannelTuning(),
    ) -> None:
        self._address = address
        self._timeout = timeout
        credentials = tls.channel_credentials(files)
        self._client = triton_aio.InferenceServerClient(
            address, channel_args=channel_options(2**31 - 1, tuning), creds=credentials
        )
        # One event loop: no lock is needed, and none is held across a network call (two first
        # callers may both fetch, and both get the same config).
        self._configs: dict[tuple[str, str], model_config_pb2.ModelConfig] = {}

    async def _config(self, model: str, version: str) -> model_config_pb2.ModelConfig:
        """The served model's config, fetched once per model and version."""
        key = (model, version)
        cached = self._configs.get(key)
        if cached is not None:
            return cached
        with _triton_errors(self._address, model):
            response = await self._client.get_model_config(
                model, version, client_timeout=deadlines.timeout(self._timeout)
            )
        return self._configs.setdefault(key, response.config)

    async def serving(self) -> bool:
        return bool(await self._client.is_server_ready(client_timeout=1.0))

    async def max_batch_size(self, model: str, version: str) -> int:
        return max(1, int((await self._config(model, version)).max_batch_size))

    async def model_parameters(self, model: str, version: str) -> dict[str, str]:
        parameters = (await self._config(model, version)).parameters
        return {key: value.string_value for key, value in parameters.items()}

    async def infer(
        self,
        model: str,
        version: str,
        input_name: str,
        batch: np.ndarray,
        output_names: Sequence[str],
        priority: int,
        request_id: str,
    ) -> dict[str, np.ndarray]:
        step = await self.max_batch_size(model, version)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
        for start in range(0, len(batch), step):
            chunk = np.ascontiguousarray(batch[start : start + step], dtype=np.float32)
            inputs = [triton.InferInput(input_name, list(chunk.shape), "FP32")]
            inputs[0].set_data_from_numpy(chunk)
            with _triton_errors(self._address, model):
                result = await self._client.infer(
                    model,
                    inputs,
                    model_version=version,
                    outputs=[triton.InferRequestedOutput(name) for name in output_names],
                    request_id=request_id,
                    priority=priority,
                    client_timeout=deadlines.timeout(self._timeout),
                )
            auditing.note(model_name=model, model_version=result.get_response().model_version)
            for name in output_names:
                array = result.as_numpy(name)
                if array is None:
                    raise errors.ContractViolation(f"model {model} returned no output {name!r}")
                parts[name].append(array)
        return {name: np.concatenate(arrays) for name, arrays in parts.items()}

    async def close(self) -> None:
        await self._client.close()
