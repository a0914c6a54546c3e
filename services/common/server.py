"""Shared server wiring: interceptor, health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common import metrics
from services.common.interceptor import ServiceInterceptor
from services.common.settings import ServiceSettings

_log = logging.getLogger("imaging.server")


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    metrics_port: int
    service_names: Sequence[str]

    def stop(self, grace: float) -> None:
        """Fail health checks first so load balancers drain us, then finish in-flight RPCs."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def start(
    name: str,
    settings: ServiceSettings,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    stages: Sequence[str] = (),
) -> RunningServer:
    """Build and start a server for ``register``'s servicers; returns the bound ports.

    ``stages`` are the pipeline stages this service times (see metrics.stage_timer).
    """
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Clients balancing over a headless Service only learn about new replicas when they
        # re-resolve; ending connections after a while (in-flight calls finish) makes them.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000)),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix=name),
        interceptors=[ServiceInterceptor(name)],
        options=options,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"{name}: cannot bind {settings.host}:{settings.port}")
    pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
    methods = [m.name for s in service_names for m in pool.FindServiceByName(s).methods]
    metrics.initialise(name, methods, stages)
    metrics_server, _ = start_http_server(settings.metrics_port, addr=settings.host)
    server.start()
    for service in ["", *service_names]:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    _log.info(
        "%s serving gRPC on %s:%d, metrics on :%d",
        name,
        settings.host,
        port,
        metrics_server.server_port,
    )
    return RunningServer(server, health_servicer, port, metrics_server.server_port, service_names)


def serve_forever(running: RunningServer, grace: float) -> None:
    """Block until SIGTERM/SIGINT, then shut down gracefully."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    _log.info("shutting down (grace %.0f s)", grace)
    running.stop(grace)
