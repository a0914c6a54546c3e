"""Entry point of the public gateway service (asyncio: one event loop, no thread per call)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health

from services.api.imaging.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import logs, server
from services.common.audit import AuditKey, AuditLog
from services.common.exchange import PixelExchange
from services.common.listeners import Service
from services.common.pipelines import PipelineRegistry
from services.common.settings import GatewaySettings
from services.gateway import readiness
from services.gateway.auditing import AuditInterceptor
from services.gateway.auth import ApiKeys, Authenticator, AuthInterceptor, OidcTokens
from services.gateway.clients import (
    ChannelTuning,
    DecoderClient,
    PostprocessorClient,
    PreprocessorClient,
    TritonClient,
)
from services.gateway.core import STAGES, Admission, Limits, StudyAnalyzer
from services.gateway.policy import PolicyBook
from services.gateway.reporting import DocumentReporter
from services.gateway.servicer import GatewayServicer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


def start(settings: GatewaySettings) -> server.AsyncRunningServer:
    """Wire the analyzer to its peers and start serving (tests call this in-process)."""
    timeout, cap = settings.call_timeout_seconds, settings.max_message_bytes
    registry = PipelineRegistry.load(settings.pipelines_dir, settings.body_parts())

    files = settings.peer_tls()
    policies = PolicyBook.load(settings.client_policy_file)
    probes: dict[str, readiness.Probe] = {}
    tasks: list[asyncio.Task[None]] = []
    trails: list[AuditLog] = []  # closed last: the trail's final checkpoint is logged

    async def register(srv: grpc.aio.Server) -> Callable[[], Awaitable[None]]:
        exchange = PixelExchange.configured(settings)
        tuning = ChannelTuning(
            settings.keepalive_seconds,
            settings.keepalive_timeout_seconds,
            settings.dns_refresh_seconds,
        )
        decoder = DecoderClient(settings.decoder_address, timeout, cap, exchange, files, tuning)
        preprocessor = PreprocessorClient(
            settings.preprocessor_address, timeout, cap, files, tuning
        )
        inference = TritonClient(settings.triton_address, timeout, files, tuning)
        postprocessor = PostprocessorClient(
            settings.postprocessor_address, timeout, cap, files, tuning
        )
        analyzer = StudyAnalyzer(
            registry=registry,
            decoder=decoder,
            preprocessor=preprocessor,
            inference=inference,
            postprocessor=postprocessor,
            limits=Limits.from_settings(settings),
            fan_out=settings.workers,
            policy=policies,
            reporter=DocumentReporter(),
        )
        gateway_pb2_grpc.add_GatewayServicer_to_server(
            GatewayServicer(
                analyzer,
                Admission(
                    settings.max_concurrent_studies,
                    settings.max_queued_studies,
                    settings.max_studies_per_client,
                ),
                settings.stream_idle_seconds,
                settings.stream_receive_seconds,
            ),
            srv,
        )

        probes.update(
            triton=inference.serving,
            decoder=decoder.serving,
            preprocessor=preprocessor.serving,
            postprocessor=postprocessor.serving,
        )

        async def close() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for client in (decoder, preprocessor, inference, postprocessor):
                await client.close()
            for trail in trails:
                trail.close()

        return close

    async def started(servicer: health.aio.HealthServicer) -> None:
        watch = readiness.watch(
            probes,
            servicer,
            [SERVICE_NAME],
            settings.peer_unreachable_seconds,
            settings.peer_probe_interval_seconds,
        )
        tasks.append(asyncio.ensure_future(watch))

    keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file is not None else None
    tokens = None
    if settings.oidc_issuer:
        if settings.oidc_jwks_file is None or not settings.oidc_audience:
            raise ValueError(
                "IMAGING_OIDC_ISSUER needs IMAGING_OIDC_AUDIENCE and IMAGING_OIDC_JWKS_FILE"
            )
        tokens = OidcTokens(settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_file)
    interceptors: list[grpc.aio.ServerInterceptor] = [AuthInterceptor(Authenticator(keys, tokens))]
    if settings.audit_log is not None:
        if settings.audit_key_file is None:
            raise ValueError("IMAGING_AUDIT_LOG needs IMAGING_AUDIT_KEY_FILE (the HMAC key)")
        # No fsync per record: it would block the event loop for a disk flush on every study;
        # each record is one write(2), so only a machine crash (not the process) can lose one.
        key = AuditKey.from_file(settings.audit_key_file)
        trail = AuditLog(settings.audit_log, key, settings.audit_chain, fsync=False)
        trails.append(trail)
        interceptors.insert(0, AuditInterceptor(trail))  # outside auth: refusals are audited
    return server.start_async(
        Service.GATEWAY, settings, register, [SERVICE_NAME], STAGES, interceptors, started
    )


def main() -> None:
    settings = GatewaySettings()
    logs.configure(settings.log_level)
    server.serve_forever(start(settings), settings.grace_seconds)


if __name__ == "__main__":
    main()
