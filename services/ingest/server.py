"""Entry point of the ingest service: the DICOM SCP (receiver role), the completion timer and
analysis workers (worker role), the Ingest gRPC API, health and metrics.

Readiness ("" and the Ingest service in grpc.health.v1) follows the dependencies: the queue
engine's connection, the spool below its watermark, and for workers the gateway; liveness
("liveness") never does, so an outage of NATS takes the pod out of rotation without
restarting it. The DIMSE port answers 0xA700 meanwhile, which peers retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from services.api.imaging.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import logs, server
from services.common.audit import AuditKey, AuditLog, ReceivedInstance
from services.common.listeners import Service
from services.common.pipelines import PipelineRegistry
from services.common.settings import IngestSettings
from services.ingest import monitoring
from services.ingest.destinations import Destinations
from services.ingest.dimse import HandshakeServer, Received, Receiver, start_scp
from services.ingest.engine import Engine, Outbox, SyncNotAlways, bridge
from services.ingest.exporter import Exporter
from services.ingest.peers import Peers
from services.ingest.senders import senders_for
from services.ingest.senders.dicom import Commitments
from services.ingest.servicer import IngestServicer
from services.ingest.spool import ResultStore, Spool
from services.ingest.worker import Analyst, Completer, GatewayCaller

log = logging.getLogger("imaging.ingest")
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name
_CONNECT_SECONDS = 60.0


@dataclass
class RunningIngest:
    grpc: server.AsyncRunningServer
    scp: HandshakeServer | None
    port: int = 0
    dimse_port: int = 0

    def __post_init__(self) -> None:
        self.port = self.grpc.port
        if self.scp is not None:
            self.dimse_port = int(self.scp.server_address[1])

    def stop(self, grace: float) -> None:
        if self.scp is not None:
            self.scp.shutdown()  # no new association; running ones finish their instance
            self.scp.server_close()
        self.grpc.stop(grace)


async def _connect(settings: IngestSettings) -> Engine:
    """Retry while the server is unreachable (it may start after us); a server that does not
    fsync before acknowledging is refused at once."""
    deadline = time.monotonic() + _CONNECT_SECONDS
    while True:
        try:
            return await Engine.connect(
                settings.nats_url,
                settings.nats_monitoring_url,
                settings.nats_timeout_seconds,
                settings.job_timeout_seconds,
            )
        except Exception as err:
            if isinstance(err, SyncNotAlways) or time.monotonic() > deadline:
                raise
            log.info("waiting for the NATS server: %s", type(err).__name__)
            await asyncio.sleep(1.0)


def _audit_trail(settings: IngestSettings) -> AuditLog | None:
    if settings.audit_log is None:
        return None
    if settings.audit_key_file is None:
        raise ValueError("IMAGING_AUDIT_LOG needs IMAGING_AUDIT_KEY_FILE (the HMAC key)")
    # fsync per record: the instance it records is itself synced before the answer.
    return AuditLog(
        settings.audit_log, AuditKey.from_file(settings.audit_key_file), settings.audit_chain
    )


def start(settings: IngestSettings) -> RunningIngest:
    roles = settings.role_set()
    spool = Spool(settings.spool_dir)
    results = ResultStore(spool)
    results.sweep_partial()
    peers = Peers.load(settings.dicom_peers_file)
    registry = PipelineRegistry.load(settings.pipelines_dir)
    trail = _audit_trail(settings)
    destinations = Destinations.load(settings.destinations_file)
    monitoring.declare()
    monitoring.declare_destinations(sorted(destinations.destinations))
    # Storage Commitment reports come back to the receiver's SCP, for the exporter's senders.
    commitments = Commitments()
    held: dict[str, Any] = {}
    tasks: list[asyncio.Task[None]] = []

    async def register(srv: grpc.aio.Server) -> Callable[[], Awaitable[None]]:
        engine = await _connect(settings)
        held["engine"] = engine
        completer = Completer(engine, spool, settings.retention_seconds, settings.quiet_seconds)
        ingest_pb2_grpc.add_IngestServicer_to_server(
            IngestServicer(engine, spool, results, completer), srv
        )
        gateway = None
        exporter = None
        if "exporter" in roles or "worker" in roles:
            exporter = Exporter(
                Outbox(engine),
                results,
                destinations,
                senders_for(destinations, commitments),
                settings.job_timeout_seconds,
            )
        if "exporter" in roles and exporter is not None and exporter.configured:
            tasks.append(asyncio.ensure_future(exporter.run()))
        if "worker" in roles:
            key = ""
            if settings.gateway_api_key_file is not None:
                key = settings.gateway_api_key_file.read_text().strip()
            gateway = GatewayCaller(
                settings.gateway_address,
                settings.gateway_tls(),
                key,
                settings.analysis_timeout_seconds,
            )
            analyst = Analyst(
                engine,
                spool,
                results,
                registry,
                gateway,
                settings.max_attempts,
                settings.retry_seconds,
                settings.job_timeout_seconds,
                exporter=exporter,
            )
            tasks.append(asyncio.ensure_future(completer.run()))
            for _ in range(settings.analyses_at_once):
                tasks.append(asyncio.ensure_future(analyst.run()))

        async def close() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if gateway is not None:
                await gateway.close()
            await engine.close()
            if trail is not None:
                trail.close()

        return close

    async def started(servicer: health.aio.HealthServicer) -> None:
        tasks.append(asyncio.ensure_future(_readiness(servicer, held, spool, settings)))

    quiet = settings.model_copy(update={"ports_file": None})  # written below, with DIMSE's
    running = server.start_async(Service.INGEST, quiet, register, [SERVICE_NAME], (), (), started)
    scp = None
    if "receiver" in roles:
        engine: Engine = held["engine"]

        def audit(received: Received) -> None:
            if trail is not None:
                trail.record(
                    ReceivedInstance(
                        calling_ae=received.calling_ae,
                        peer=received.address,
                        study_uid=received.study_uid,
                        sop_class_uid=received.sop_class_uid,
                        transfer_syntax_uid=received.transfer_syntax,
                        instance_sha256=received.sha256,
                        outcome=received.outcome,
                    )
                )

        receiver = Receiver(
            spool,
            peers,
            bridge(running.loop, settings.nats_timeout_seconds),
            engine.change,
            audit,
            settings.quiet_seconds,
            settings.disk_watermark,
            commitments=commitments,
        )
        scp = start_scp(
            receiver,
            spool,
            settings.host,
            settings.dimse_port,
            settings.ae_title,
            settings.max_associations,
            settings.dimse_timeout_seconds,
            settings.tls(),
            settings.tls_handshake_seconds,
        )
    ingest = RunningIngest(running, scp)
    server.report_ports(
        settings,
        running.port,
        running.metrics_port,
        running.health_port,
        dimse_port=ingest.dimse_port,
    )
    log.info("ingest roles %s; DICOM on port %d", ",".join(sorted(roles)), ingest.dimse_port)
    return ingest


async def _readiness(
    servicer: health.aio.HealthServicer,
    held: dict[str, Any],
    spool: Spool,
    settings: IngestSettings,
) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    last = None
    while True:
        engine: Engine = held["engine"]
        ready = engine.nc.is_connected and not spool.above_watermark(settings.disk_watermark)
        if ready != last:
            for name in ("", SERVICE_NAME):
                await servicer.set(name, serving if ready else not_serving)
            last = ready
        await asyncio.sleep(1.0)


def main() -> None:
    settings = IngestSettings()
    logs.configure(settings.log_level)
    server.serve_forever(start(settings), settings.grace_seconds)


if __name__ == "__main__":
    main()
